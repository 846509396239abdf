"""The unmodified ``openai`` package as a client of the gateway."""

from __future__ import annotations

import io

import pytest
from openai import AsyncOpenAI, BadRequestError

from inzwa_voice.engines.base import OPENAI_VOICE_NAMES
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.media.audiofile import ResponseFormat, decode_audio
from tests.conftest import Server

SENTENCE = "The clinic opens at eight in the morning."


@pytest.fixture
async def client(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
async def test_speech_every_format_decodes_to_the_sentence_length(client: AsyncOpenAI, fmt: ResponseFormat) -> None:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=SENTENCE,
        response_format=fmt,
    ) as response:
        chunks = [chunk async for chunk in response.iter_bytes()]
    data = b"".join(chunks)
    # OpenAI's pcm is 24 kHz mono s16le without a header; the other formats carry their rate.
    seconds = len(data) / 2 / 24000 if fmt == "pcm" else len(decode_audio(data, max_seconds=60)) / 16000
    assert 1.5 < seconds < 5.0, (fmt, seconds)


async def test_speech_rejects_bad_speed_through_the_client(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=10)
    assert info.value.body["param"] == "speed"  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
async def test_transcriptions_in_every_format(client: AsyncOpenAI, fmt: str) -> None:
    speech = await client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav")
    result = await client.audio.transcriptions.create(  # type: ignore[call-overload]
        model="whisper-1",
        file=("speech.wav", io.BytesIO(speech.content), "audio/wav"),
        language="en",
        response_format=fmt,
    )
    text = result if isinstance(result, str) else result.text
    assert "clinic" in text.lower()
    if fmt == "srt":
        assert "00:00:00,000 --> " in text
    if fmt == "vtt":
        assert text.startswith("WEBVTT")
    if fmt == "verbose_json":
        assert result.segments and result.duration > 1.5


async def test_streaming_chat_completion_arrives_in_order_and_ends(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hello, where is the clinic?"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()


async def test_chat_completion_without_streaming(client: AsyncOpenAI) -> None:
    result = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Good morning"}], max_tokens=20
    )
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content


async def test_a_cancelled_stream_stops_generation(client: AsyncOpenAI, engines: Engines) -> None:
    cancelled = engines.metrics.llm_generations.labels("cancelled")
    tokens = engines.metrics.llm_tokens
    before_cancelled, before_tokens = cancelled._value.get(), tokens._value.get()
    stream = await client.chat.completions.create(
        model="default",
        # Long enough that the model is still writing when the client leaves (a count "to five
        # hundred" is one the packaged Qwen gives up on by itself after some thirty tokens).
        messages=[
            {
                "role": "user",
                "content": "Tell me a very long story about a village by a river, at least five hundred words.",
            }
        ],
        max_tokens=1500,
        stream=True,
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.close()
    # One model context serves all requests in turn, so this answer can only start once the
    # abandoned generation has released the model: its completion proves the first one ended.
    await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert cancelled._value.get() == before_cancelled + 1
    assert tokens._value.get() - before_tokens < 1000


def test_openai_voice_names_map_to_the_english_voice(engines: Engines) -> None:
    assert {engines.tts.resolve(name).id for name in OPENAI_VOICE_NAMES} == {"joe"}
