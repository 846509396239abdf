"""Engines: VAD, ASR, LLM and TTS behind small protocols, loaded once per process."""
