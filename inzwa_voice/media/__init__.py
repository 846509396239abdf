"""The media plane: codecs, stateful resampling, framing, pacing and playout tracking.

Every leg converts its wire audio to the pipeline format (PCM16 mono, 16 kHz, 20 ms frames) with
these pieces, and back. Nothing here knows about calls or transports.
"""
