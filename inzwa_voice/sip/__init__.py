"""SIP with pjsua2, in the gateway process: the parts the SIP leg (``legs/sip.py``) is built from.

* ``endpoint``: the pjsua2 library on its own worker thread (transports, calls, commands), and
  why every pjsua2 call happens on that one thread.
* ``media``: one call's audio between pjsua2's 20 ms media clock and the asyncio loop.
* ``sdp``: our codec choice (G.722, then PCMU, then PCMA), whatever order a caller offers.
* ``uri``: caller and dialled numbers out of SIP headers, transfer targets as URIs.
* ``pcap``: WAV to RTP pcap, so SIPp can speak sentences from our own TTS in tests.
"""
