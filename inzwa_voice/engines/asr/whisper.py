"""faster-whisper (CTranslate2) ASR with the packaged multilingual Whisper base.

Decoding is greedy at temperature 0 with a cap on new tokens: Shona is a low-resource
language for Whisper, and without these the decoder can loop on one phrase for seconds.

A call's stretches of speech are short (one sentence, 0.5–3 s), but faster-whisper pads every
decode to Whisper's 30 s window, so each one paid a fixed ~0.43 s encoder pass on two cores
whatever its length. Clips up to ``SHORT_MAX_S`` are therefore encoded as a window of their own
length plus ``SILENCE_PAD_S`` of silence, which CTranslate2 accepts: about a third of the cost
for a sentence. Whisper needs that silence after the speech: in a window that ends soon after
the last word it takes the window's end for more speech and repeats the sentence (measured:
"Hello." came back as four hellos with 0.5–4 s of padding, once with 8 s). As a guard besides,
a segment Whisper places at or after the end of the audio is dropped: there is nothing there.
Longer audio (REST transcriptions) goes through faster-whisper's own 30 s windows.
"""

from __future__ import annotations

import re
from concurrent.futures import Executor
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import Float32, ModelInfo, Segment, Transcript

SAMPLE_RATE = 16000
SHORT_MAX_S = 20.0
"""Audio up to this long is decoded in a window of its own size; longer goes in 30 s windows."""
SILENCE_PAD_S = 8.0
"""Silence appended to a short clip before encoding, so Whisper sees the speech end."""
TOKENS_PER_S = 10.0
"""New tokens allowed per second of a short clip (words, punctuation and timestamps), plus
``BASE_TOKENS``: a bound on how long a loop that slips past the guard can run."""
BASE_TOKENS = 16
SECONDS_PER_TIMESTAMP = 0.02


class WhisperASR:
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 2,
        workers: int = 2,
        language: str = "sn",
        beam_size: int = 1,
        max_new_tokens: int = 96,
        initial_prompt: str | None = None,
        hotwords: str | None = None,
    ) -> None:
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=workers,
            local_files_only=True,
        )
        self._language = language
        self._beam_size = beam_size
        self._max_new_tokens = max_new_tokens
        self._initial_prompt = initial_prompt
        self._hotwords = hotwords

    def transcribe(
        self,
        audio: Float32,
        *,
        language: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Transcript:
        lang = language or self._language
        # The helpline's vocabulary, then the caller's earlier words (the stretches before).
        context = " ".join(p for p in (self._initial_prompt, prompt) if p) or None
        cap = max_new_tokens or self._max_new_tokens
        if len(audio) <= SHORT_MAX_S * SAMPLE_RATE:
            return self._short(audio, lang, context, cap)
        segments, info = self._model.transcribe(
            audio,
            language=lang,
            beam_size=self._beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            initial_prompt=context,
            hotwords=self._hotwords,
            max_new_tokens=cap,
            vad_filter=False,
            without_timestamps=False,
        )
        out = [
            Segment(text=s.text.strip(), start_ms=round(s.start * 1000), end_ms=round(s.end * 1000))
            for s in segments
            if s.text.strip()
        ]
        return _transcript(out, info.language, float(info.duration))

    def _short(self, audio: Float32, language: str, context: str | None, cap: int) -> Transcript:
        """One window of the clip's own length plus silence: encode, then decode with timestamps."""
        model = self._model
        seconds = len(audio) / SAMPLE_RATE
        padded = np.concatenate([audio.astype(np.float32), np.zeros(int(SILENCE_PAD_S * SAMPLE_RATE), np.float32)])
        features = model.feature_extractor(padded)
        features = np.ascontiguousarray(features[None, :, : features.shape[1] // 2 * 2])  # the encoder halves it
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        previous = tokenizer.encode(" " + context.strip()) if context else []
        sot = model.get_prompt(tokenizer, previous, without_timestamps=False, hotwords=self._hotwords)
        budget = min(cap, BASE_TOKENS + int(TOKENS_PER_S * seconds))
        result = model.model.generate(
            encoded,
            [sot],
            beam_size=self._beam_size,
            max_length=len(sot) + budget,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
            max_initial_timestamp_index=50,
        )
        return _transcript(_segments(result[0].sequences_ids[0], tokenizer, seconds), language, seconds)


def _segments(tokens: list[int], tokenizer: Tokenizer, seconds: float) -> list[Segment]:
    """Split decoded tokens at their timestamps; a segment starting at or past the end of the
    audio is Whisper repeating itself into the silence, and so is everything after it."""
    out: list[Segment] = []
    text: list[int] = []
    start = 0.0
    for token in [*tokens, tokenizer.eot]:
        if token < tokenizer.eot:
            text.append(token)
            continue
        if token == tokenizer.eot:
            at = seconds
        elif token >= tokenizer.timestamp_begin:
            at = (token - tokenizer.timestamp_begin) * SECONDS_PER_TIMESTAMP
        else:
            continue  # no other special token is decoded, but none is text either
        if text:
            if start >= seconds and out:
                break
            words = unrepeated(tokenizer.decode(text).strip())
            if words:
                out.append(Segment(text=words, start_ms=round(start * 1000), end_ms=round(min(at, seconds) * 1000)))
            text = []
        start = at
    return out


def unrepeated(text: str) -> str:
    """``text`` without a sentence said again right after itself, nor a trailing start of one:
    Whisper's loop ("Should I tell the police? Should I tell the police? Should") when the
    window gives it no clear end. A caller who really says "Hello? Hello?" loses nothing."""
    sentences = _SENTENCE.findall(text)
    kept: list[str] = []
    for sentence in sentences:
        said = _words(sentence)
        if kept and said and said == _words(kept[-1]):
            continue
        kept.append(sentence)
    if (
        len(kept) > 1
        and not _ENDED.search(kept[-1])
        and " ".join(_words(kept[-2])).startswith(" ".join(_words(kept[-1])))
    ):
        kept.pop()
    return " ".join(s.strip() for s in kept)


def _words(sentence: str) -> list[str]:
    return re.findall(r"\w+", sentence.lower())


_SENTENCE = re.compile(r"[^.?!]+[.?!]*")
_ENDED = re.compile(r"[.?!]\s*$")


def _transcript(segments: list[Segment], language: str, seconds: float) -> Transcript:
    return Transcript(text=" ".join(s.text for s in segments), segments=segments, language=language, duration_s=seconds)


def load(settings: Settings, executor: Executor) -> tuple[WhisperASR, ModelInfo]:
    """``asr_engine = "whisper"``: the packaged multilingual base unless ``asr_model_path`` names a
    CTranslate2 model folder (a Shona fine-tune, a larger Whisper)."""
    model_dir = settings.asr_model_path or models.whisper_base_dir(settings.data_dir)
    asr = WhisperASR(
        model_dir,
        device=settings.asr_device,
        compute_type=settings.asr_compute_type,
        threads=settings.asr_threads or settings.run_threads,
        workers=settings.slots,  # as many decodes at once as the scheduler runs
        language=settings.language,
        beam_size=settings.asr_beam_size,
        max_new_tokens=settings.asr_max_new_tokens,
        initial_prompt=settings.asr_initial_prompt,
        hotwords=settings.asr_hotwords,
    )
    digest = models.verified_digest(model_dir / "model.bin")
    name = "whisper-base" if settings.asr_model_path is None else model_dir.name
    return asr, models.file_info(name, "asr", model_dir, digest, ["transcription", "sn", "en"])
