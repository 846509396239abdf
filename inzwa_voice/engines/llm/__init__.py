"""Language model engines: embedded llama.cpp and any OpenAI-compatible server."""

from __future__ import annotations

from inzwa_voice.config import Settings
from inzwa_voice.engines.base import GenerationDefaults


def generation_defaults(settings: Settings) -> GenerationDefaults:
    """The generation bounds from settings, the same whichever LLM engine serves them."""
    return GenerationDefaults(
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        system_prompt=settings.llm_system_prompt,
        token_timeout_s=settings.llm_token_timeout_s,
        timeout_s=settings.llm_timeout_s,
    )
