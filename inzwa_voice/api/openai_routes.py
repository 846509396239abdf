"""OpenAI-compatible routes, so the unmodified ``openai`` client can use the gateway.

Model names are accepted as given (``tts-1``, ``whisper-1``, ``gpt-4o-mini`` …): each route is
served by the engine loaded for it, and ``GET /v1/models`` says which models those are.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from inzwa_voice.api.fallback import llm_unavailable
from inzwa_voice.api.keys import ENGINES, GATE, SAFETY, SETTINGS
from inzwa_voice.api.rest import check_context, check_language, decode_upload, to_chat_messages, transcribe
from inzwa_voice.api.schemas import ChatCompletionRequest, SpeechRequest, parse_json
from inzwa_voice.api.streaming import check_text, collect, resolve_voice, stream_speech, stream_sse
from inzwa_voice.conversation.reply import ReplyInfo, safe_reply
from inzwa_voice.engines.base import LLMUnavailableError, Segment, Transcript
from inzwa_voice.errors import ApiError, invalid

OPENAI_SPEECH_RATE = 24000
_TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
_MAX_FORM_PARTS = 16
_MAX_FIELD_BYTES = 4096


async def speech(request: web.Request) -> web.StreamResponse:
    body = await parse_json(request, SpeechRequest)
    text = check_text(request, body.input, "input")
    voice = resolve_voice(request, body.voice)
    rate = 48000 if body.response_format == "opus" else OPENAI_SPEECH_RATE
    with request.app[GATE].enter():
        return await stream_speech(
            request, text, voice=voice, speed=body.speed, fmt=body.response_format, sample_rate=rate
        )


async def _read_form(request: web.Request) -> tuple[bytes, dict[str, str]]:
    """Read a multipart upload, enforcing the byte and part limits while reading, not after.

    aiohttp's reader raises ``ValueError`` (no or a wrong boundary) or ``BadHttpMessage`` (a part
    header with control characters) on a malformed body: those are the client's mistake, a 400."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError("expected a multipart/form-data upload", status=415, code="unsupported_media_type")
    try:
        return await _read_parts(request)
    except (ValueError, HttpProcessingError) as exc:
        raise invalid(f"malformed multipart/form-data body: {str(exc)[:200]}", None, "invalid_form") from None


async def _read_parts(request: web.Request) -> tuple[bytes, dict[str, str]]:
    budget = request.app[SETTINGS].max_upload_bytes
    audio: bytes | None = None
    fields: dict[str, str] = {}
    reader = await request.multipart()
    for _ in range(_MAX_FORM_PARTS + 1):
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or not part.name:
            raise invalid("nested or unnamed form parts are not accepted", None, "invalid_form")
        data = bytearray()
        while chunk := await part.read_chunk(1 << 16):
            data += chunk
            budget -= len(chunk)
            if budget < 0:
                limit = request.app[SETTINGS].max_upload_bytes
                raise ApiError(f"upload exceeds the {limit}-byte limit", status=413, code="upload_too_large")
        if part.name == "file":
            if audio is not None:
                raise invalid("the form has more than one 'file' part", "file", "invalid_form")
            audio = bytes(data)
        elif len(data) > _MAX_FIELD_BYTES:
            raise invalid(f"form field {part.name!r} exceeds {_MAX_FIELD_BYTES} bytes", part.name, "invalid_form")
        else:
            fields[part.name] = data.decode("utf-8", "replace")
    else:
        raise invalid(f"the form has more than {_MAX_FORM_PARTS} parts", None, "invalid_form")
    if audio is None:
        raise invalid("the form has no 'file' part", "file")
    return audio, fields


def _timestamp(ms: int, sep: str) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments: list[Segment], sep: str) -> list[str]:
    return [f"{_timestamp(s.start_ms, sep)} --> {_timestamp(s.end_ms, sep)}\n{s.text}\n" for s in segments]


def render_transcript(result: Transcript, fmt: str) -> web.Response:
    if fmt == "text":
        return web.Response(text=result.text + "\n", content_type="text/plain")
    if fmt == "srt":
        cues = [f"{i}\n{cue}" for i, cue in enumerate(_cues(result.segments, ","), 1)]
        return web.Response(text="\n".join(cues), content_type="application/x-subrip")
    if fmt == "vtt":
        return web.Response(text="WEBVTT\n\n" + "\n".join(_cues(result.segments, ".")), content_type="text/vtt")
    if fmt == "verbose_json":
        return web.json_response(
            {
                "task": "transcribe",
                "language": result.language,
                "duration": result.duration_s,
                "text": result.text,
                "segments": [
                    {"id": i, "start": s.start_ms / 1000, "end": s.end_ms / 1000, "text": s.text}
                    for i, s in enumerate(result.segments)
                ],
            }
        )
    return web.json_response({"text": result.text})


async def transcriptions(request: web.Request) -> web.Response:
    audio_bytes, fields = await _read_form(request)
    fmt = fields.get("response_format", "json")
    if fmt not in _TRANSCRIPT_FORMATS:
        raise invalid(f"response_format must be one of {_TRANSCRIPT_FORMATS}", "response_format")
    language = check_language(request, fields.get("language"))
    audio = decode_upload(request, audio_bytes, None, "file")
    result = await transcribe(request, audio, language, fields.get("prompt") or None)
    return render_transcript(result, fmt)


def _chunk(cid: str, created: int, model: str, delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def finish_reason(info: ReplyInfo, max_tokens: int) -> str:
    """OpenAI's reasons: the safety filter cut it, the token cap cut it, or the model stopped."""
    if info.action == "filtered":
        return "content_filter"
    return "length" if info.tokens >= max_tokens else "stop"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await parse_json(request, ChatCompletionRequest)
    messages = to_chat_messages(request, body.messages)
    engines = request.app[ENGINES]
    model = engines.llm.name
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_context(request, messages, max_tokens)
    settings = request.app[SETTINGS]
    language = settings.language
    cid, created, info = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), ReplyInfo()
    with request.app[GATE].enter():
        pieces = safe_reply(
            engines,
            request.app[SAFETY],
            messages,
            language=language,
            info=info,
            max_tokens=max_tokens,
            temperature=body.temperature,
            stop=stop,
        )
        if not body.stream:
            try:
                text = await collect(pieces)
            except LLMUnavailableError as exc:  # a remote LLM that is down: 503, not a 500
                raise llm_unavailable(exc) from None
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish_reason(info, max_tokens or settings.llm_max_tokens),
                        }
                    ],
                }
            )
        return await stream_sse(
            request,
            pieces,
            first=[_chunk(cid, created, model, {"role": "assistant", "content": ""}, None)],
            each=lambda piece: _chunk(cid, created, model, {"content": piece}, None),
            last=lambda: [_chunk(cid, created, model, {}, finish_reason(info, max_tokens or settings.llm_max_tokens))],
        )


async def list_models(request: web.Request) -> web.Response:
    created = request.app[ENGINES].loaded_at
    data = [
        {
            "id": m.id,
            "object": "model",
            "created": created,
            "owned_by": m.owned_by,
            "kind": m.kind,
            "size_bytes": m.size_bytes,
            "sha256": m.sha256,
            "capabilities": m.capabilities,
        }
        for m in request.app[ENGINES].catalog
    ]
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
