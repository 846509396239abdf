"""Engines: VAD, ASR, LLM and TTS behind small protocols, loaded once per process.

``base`` holds the protocols and the values they exchange, ``runtime.Engines`` runs them for
calls and routes (in the inference executor, timed), and ``loading.load_engines`` picks and
loads the implementations (``vad/``, ``asr/``, ``llm/``, ``tts/``) that the settings name.
"""
