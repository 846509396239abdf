"""faster-whisper (CTranslate2) ASR with the packaged multilingual Whisper base.

Decoding is greedy at temperature 0 with a cap on new tokens: Shona is a low-resource
language for Whisper, and without these the decoder can loop on one phrase for seconds.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from faster_whisper import WhisperModel

from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import Float32, ModelInfo, Segment, Transcript

SAMPLE_RATE = 16000


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
        segments, info = self._model.transcribe(
            audio,
            language=lang,
            beam_size=self._beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            # The helpline's vocabulary, then the caller's earlier words (the stretches before).
            initial_prompt=" ".join(p for p in (self._initial_prompt, prompt) if p) or None,
            hotwords=self._hotwords,
            max_new_tokens=max_new_tokens or self._max_new_tokens,
            vad_filter=False,
            without_timestamps=False,
        )
        out = [
            Segment(text=s.text.strip(), start_ms=round(s.start * 1000), end_ms=round(s.end * 1000))
            for s in segments
            if s.text.strip()
        ]
        return Transcript(
            text=" ".join(s.text for s in out),
            segments=out,
            language=info.language,
            duration_s=float(info.duration),
        )


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
