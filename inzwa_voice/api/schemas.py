"""Request bodies of the REST and OpenAI-compatible routes, validated by pydantic.

Limits that depend on settings (text length, message count) are checked by the handlers after
parsing; the static bounds (speed, sample rates, formats) live here next to the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inzwa_voice.errors import ApiError

M = TypeVar("M", bound=BaseModel)

SampleRate = Annotated[int, Field(ge=8000, le=48000)]
Speed = Annotated[float, Field(ge=0.25, le=4.0)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """OpenAI content may be a list of parts; only text parts are meaningful here."""
        if isinstance(self.content, str):
            return self.content
        return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class AsrRequest(BaseModel):
    audio_base64: str = Field(min_length=1)
    sample_rate: SampleRate = 16000
    language: str | None = None


class ChatRequest(BaseModel):
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    language: str | None = None
    profile: Annotated[str, Field(max_length=64)] | None = None


class TtsRequest(BaseModel):
    text: str = Field(min_length=1)
    voice: str | None = None
    format: Literal["opus", "wav", "pcm", "mp3", "flac", "aac"] = "wav"
    speed: Speed = 1.0
    sample_rate: SampleRate | None = None


class SpeechRequest(BaseModel):
    """OpenAI ``POST /v1/audio/speech``."""

    model: str = "tts-1"
    input: str = Field(min_length=1, max_length=4096)
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Speed = 1.0
    instructions: str | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI ``POST /v1/chat/completions`` (the fields a voice helpline honours)."""

    model_config = ConfigDict(extra="ignore")
    model: str = "default"
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return ApiError(f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")


async def parse_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, with a clear 4xx for each way it can be wrong."""
    if request.content_type != "application/json":
        raise ApiError(
            f"expected Content-Type application/json, got {request.content_type or 'none'}",
            status=415,
            code="unsupported_media_type",
        )
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"malformed JSON body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError("the JSON body must be an object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
