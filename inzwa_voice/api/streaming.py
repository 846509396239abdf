"""Response streaming shared by routes: speech audio as it is synthesized, and SSE.

Both write to the client as soon as data exists and stop the producer the moment the client
goes away, so a hung-up client never keeps a model busy.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from aiohttp import web

from inzwa_voice.api.keys import ENGINES, SETTINGS
from inzwa_voice.engines.base import UnknownVoiceError
from inzwa_voice.errors import invalid
from inzwa_voice.media.audiofile import ResponseFormat, content_type, open_encoder

log = logging.getLogger(__name__)


# Line breaks and tabs are text (spoken as pauses); any other control character (C0, DEL, C1)
# is refused, as the engines cannot speak it and some of them (NUL) fail the synthesis outright.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_text(request: web.Request, text: str, param: str) -> str:
    limit = request.app[SETTINGS].max_text_chars
    if not text.strip():
        raise invalid(f"{param} must not be empty", param, "empty_text")
    if len(text) > limit:
        raise invalid(f"{param} is {len(text)} characters; the limit is {limit}", param, "text_too_long")
    if control := _CONTROL.search(text):
        raise invalid(
            f"{param} has the control character U+{ord(control[0]):04X} at {control.start()}; "
            "only line breaks and tabs are allowed",
            param,
            "invalid_text",
        )
    return text


def resolve_voice(request: web.Request, voice: str) -> str:
    try:
        return request.app[ENGINES].tts.resolve(voice).id
    except UnknownVoiceError:
        known = ", ".join(v.id for v in request.app[ENGINES].tts.voices())
        raise invalid(f"unknown voice {voice!r}; installed voices: {known}", "voice", "unknown_voice") from None


async def stream_speech(
    request: web.Request, text: str, *, voice: str, speed: float, fmt: ResponseFormat, sample_rate: int
) -> web.StreamResponse:
    """Synthesize sentence by sentence and send each encoded piece as soon as it exists.

    The headers go out with the first bytes, not before: a synthesis that fails before any audio
    is still answered with an error status, and a WAV (which comes whole) gets a Content-Length.
    """
    encoder = open_encoder(fmt, sample_rate)
    response = web.StreamResponse(headers={"Content-Type": content_type(fmt)})
    pcm_stream = request.app[ENGINES].synthesize(text, voice=voice, speed=speed, sample_rate=sample_rate)
    async with aclosing(pcm_stream):
        async for pcm in pcm_stream:
            await _send(request, response, encoder.encode(pcm), last=False)
        await _send(request, response, encoder.finish(), last=True)
    await response.write_eof()
    return response


async def _send(request: web.Request, response: web.StreamResponse, data: bytes, *, last: bool) -> None:
    if not response.prepared and (data or last):
        if last:
            response.content_length = len(data)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
    if data:
        await response.write(data)


async def stream_sse(
    request: web.Request,
    pieces: AsyncGenerator[str, None],
    *,
    each: Callable[[str], object],
    first: list[object] | None = None,
    last: Callable[[], list[object]] | None = None,
) -> web.StreamResponse:
    """Relay ``pieces`` as Server-Sent Events ending in ``[DONE]``.

    Once the stream has started, a failure can no longer change the status code, so it is sent
    as an ``error`` event before ``[DONE]`` (and the closing ``last`` events, which describe a
    success, are left out); a client that hung up just ends the generation.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    try:
        for event in first or []:
            await send_sse(response, event)
        try:
            async with aclosing(pieces):
                async for piece in pieces:
                    await send_sse(response, each(piece))
        except ConnectionError:
            raise
        except Exception as exc:
            log.warning("stream failed", extra={"error": str(exc)})
            code = "timeout" if isinstance(exc, TimeoutError) else "generation_failed"
            await send_sse(response, {"error": {"message": str(exc), "type": "api_error", "code": code}})
        else:
            for event in last() if last else []:
                await send_sse(response, event)
        await send_sse(response, "[DONE]")
        await response.write_eof()
    except ConnectionError:
        log.info("client went away during the stream")
    return response


async def send_sse(response: web.StreamResponse, payload: object) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    await response.write(f"data: {data}\n\n".encode())


async def collect(pieces: AsyncGenerator[str, None]) -> str:
    return "".join([piece async for piece in pieces])
