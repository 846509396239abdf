"""The seed REST API: ``/v1/asr``, ``/v1/chat`` (SSE when streaming) and ``/v1/tts``."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from aiohttp import web

from inzwa_voice.api.fallback import or_apology
from inzwa_voice.api.keys import CALLS, ENGINES, GATE, SETTINGS
from inzwa_voice.api.schemas import AsrRequest, ChatRequest, Message, TtsRequest, parse_json
from inzwa_voice.api.streaming import check_text, collect, resolve_voice, stream_speech, stream_sse
from inzwa_voice.conversation.brain import Dialog
from inzwa_voice.engines.base import ChatMessage, Float32, Transcript
from inzwa_voice.errors import invalid
from inzwa_voice.media.audiofile import AudioDecodeError, decode_audio, decode_pcm16

# Containers recognised by their first bytes; anything else in /v1/asr is raw PCM16.
_CONTAINER_MAGIC = (b"RIFF", b"OggS", b"fLaC", b"ID3", b"\x1a\x45\xdf\xa3")


def is_audio_file(data: bytes) -> bool:
    """A container signature that raw PCM cannot plausibly start with, or an MP4 ``ftyp`` box."""
    return data.startswith(_CONTAINER_MAGIC) or data[4:8] == b"ftyp"


def may_be_mpeg(data: bytes) -> bool:
    """An MPEG audio or ADTS frame sync. Raw PCM can start with these bits too, so such data
    is tried as a file first and read as PCM when that fails."""
    return len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0


def check_language(request: web.Request, language: str | None) -> str:
    settings = request.app[SETTINGS]
    lang = (language or settings.language).lower()
    if lang not in settings.languages:
        raise invalid(f"language {lang!r} is not served; choose one of {settings.languages}", "language")
    return lang


def decode_upload(request: web.Request, data: bytes, sample_rate: int | None, param: str) -> Float32:
    """Decode an audio file, or raw PCM16 when ``sample_rate`` is given and no container is seen."""
    max_seconds = request.app[SETTINGS].max_audio_seconds
    try:
        if sample_rate is None or is_audio_file(data):
            return decode_audio(data, max_seconds=max_seconds)
        if may_be_mpeg(data):
            with contextlib.suppress(AudioDecodeError):
                return decode_audio(data, max_seconds=max_seconds)
        if data[:64].isascii() and all(32 <= b < 127 or b in b"\t\r\n" for b in data[:256]):
            raise AudioDecodeError("the data is text, not audio")
        return decode_pcm16(data, sample_rate, max_seconds=max_seconds)
    except AudioDecodeError as exc:
        raise invalid(str(exc), param, "invalid_audio") from None


def to_chat_messages(request: web.Request, messages: list[Message]) -> list[ChatMessage]:
    settings = request.app[SETTINGS]
    if len(messages) > settings.max_chat_messages:
        raise invalid(f"at most {settings.max_chat_messages} messages per request", "messages")
    out = []
    for i, message in enumerate(messages):
        text = message.text()
        if len(text) > settings.max_text_chars:
            raise invalid(f"message {i} exceeds {settings.max_text_chars} characters", f"messages.{i}.content")
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role, text))
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise invalid("the conversation needs at least one non-empty user message", "messages")
    return out


@runtime_checkable
class TokenCounter(Protocol):
    """An LLM that can say how long a text is in its tokens (llama.cpp can; a remote server not)."""

    def count_tokens(self, text: str) -> int: ...


def check_context(request: web.Request, messages: list[ChatMessage], max_tokens: int | None) -> None:
    """400 ``context_length_exceeded`` when the system prompt, the last user message and the answer
    cannot fit the LLM's context together.

    ``max_text_chars`` counts characters, but the context counts tokens, and a character can be
    several (an emoji is two or three): text inside the character limit can still not fit, which
    the LLM would only find once it runs, as a server error. Older turns are not counted: the LLM
    drops them to make room."""
    llm = request.app[ENGINES].llm
    if not isinstance(llm, TokenCounter):
        return
    settings = request.app[SETTINGS]
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    system = "\n\n".join(m.content for m in messages if m.role == "system") or settings.llm_system_prompt
    prompt = llm.count_tokens(system) + llm.count_tokens(messages[last].content)
    answer = max_tokens or settings.llm_max_tokens
    if prompt + answer > settings.llm_context:
        raise invalid(
            f"message {last} with the system prompt is {prompt} tokens, and with {answer} tokens for the answer "
            f"it does not fit the model's {settings.llm_context}-token context; shorten it",
            f"messages.{last}.content",
            "context_length_exceeded",
        )


async def transcribe(request: web.Request, audio: Float32, language: str, prompt: str | None) -> Transcript:
    with request.app[GATE].enter():
        return await request.app[ENGINES].transcribe(audio, language=language, prompt=prompt)


async def asr(request: web.Request) -> web.Response:
    body = await parse_json(request, AsrRequest)
    language = check_language(request, body.language)
    try:
        data = base64.b64decode(body.audio_base64, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("audio_base64 is not valid base64", "audio_base64", "invalid_base64") from None
    audio = decode_upload(request, data, body.sample_rate, "audio_base64")
    result = await transcribe(request, audio, language, None)
    return web.json_response(
        {
            "text": result.text,
            "language": result.language,
            "duration_ms": round(result.duration_s * 1000),
            "segments": [{"text": s.text, "start_ms": s.start_ms, "end_ms": s.end_ms} for s in result.segments],
        }
    )


async def chat(request: web.Request) -> web.StreamResponse:
    """One answer from the same brain as calls: safety, intents, the profile's knowledge base,
    then the LLM grounded on it; ``source`` says which."""
    body = await parse_json(request, ChatRequest)
    messages = to_chat_messages(request, body.messages)
    check_context(request, messages, body.max_tokens)
    calls = request.app[CALLS]
    profile = calls.default_profile()
    if body.profile is not None:
        named = calls.dialplan.profiles.get(body.profile) if calls.dialplan is not None else None
        if named is None:
            raise invalid(f"no profile {body.profile!r} in the dialplan", "profile", "unknown_profile")
        profile = named
    language = check_language(request, body.language or profile.language)
    question = next(m.content for m in reversed(messages) if m.role == "user")
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    history = [m for m in messages[:last] if m.role != "system"]
    with request.app[GATE].enter():
        answer = await calls.brain.answer(
            question,
            profile=profile,
            language=language,
            knowledge=calls.knowledge_for(profile),
            dialog=Dialog(),
            history=history,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
        )
        # A remote LLM that is down gets the profile's apology, as a call would speak it.
        phrases = answer.phrases
        pieces = _one(answer.text or "") if phrases is None else or_apology(answer, phrases, profile.apology)
        if not body.stream:
            text = await collect(pieces)
            return web.json_response(
                {
                    "message": {"role": "assistant", "content": text},
                    "safety": answer.info.public(),
                    "source": answer.source.public(),
                }
            )
        return await stream_sse(
            request,
            pieces,
            each=lambda piece: {"token": piece},
            last=lambda: [{"done": True, "safety": answer.info.public(), "source": answer.source.public()}],
        )


async def _one(text: str) -> AsyncGenerator[str, None]:
    yield text


async def tts(request: web.Request) -> web.StreamResponse:
    body = await parse_json(request, TtsRequest)
    text = check_text(request, body.text, "text")
    voice = resolve_voice(request, body.voice or request.app[SETTINGS].tts_voice)
    native = request.app[ENGINES].tts.resolve(voice).sample_rate
    rate = 48000 if body.format == "opus" else (body.sample_rate or native)
    if body.format == "opus" and body.sample_rate not in (None, 48000):
        raise invalid("opus output is always 48000 Hz", "sample_rate")
    with request.app[GATE].enter():
        return await stream_speech(request, text, voice=voice, speed=body.speed, fmt=body.format, sample_rate=rate)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/asr", asr)
    app.router.add_post("/v1/chat", chat)
    app.router.add_post("/v1/tts", tts)
