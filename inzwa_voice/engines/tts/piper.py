"""Piper VITS voices run through onnxruntime.

A *voice* is an ONNX model plus the espeak-ng voice its text is phonemized with. There is no
Shona VITS model in any package, so the Shona voice reuses the English model with espeak-ng's
Swahili (``sw``) phonemizer: Bantu orthography and phonology are close enough that Shona text
read this way is intelligible, which the English phonemizer's reading is not.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper.config import PiperConfig, SynthesisConfig
from piper.voice import PiperVoice

from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import OPENAI_VOICE_NAMES, PCM16, ModelInfo, UnknownVoiceError, VoiceInfo

SPEED_MIN, SPEED_MAX = 0.25, 4.0


@dataclass(frozen=True)
class VoiceSpec:
    id: str
    model_path: Path
    config_path: Path
    language: str
    espeak_voice: str
    description: str = ""
    aliases: tuple[str, ...] = ()


class PiperTTS:
    def __init__(self, specs: list[VoiceSpec], *, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sessions: dict[Path, ort.InferenceSession] = {}
        self._voices: dict[str, PiperVoice] = {}
        self._info: dict[str, VoiceInfo] = {}
        self._alias: dict[str, str] = {}
        for spec in specs:
            if spec.model_path not in sessions:
                sessions[spec.model_path] = ort.InferenceSession(
                    str(spec.model_path), opts, providers=["CPUExecutionProvider"]
                )
            config = PiperConfig.from_dict(json.loads(spec.config_path.read_text(encoding="utf-8")))
            config = dataclasses.replace(config, espeak_voice=spec.espeak_voice)
            self._voices[spec.id] = PiperVoice(session=sessions[spec.model_path], config=config)
            self._info[spec.id] = VoiceInfo(
                id=spec.id,
                language=spec.language,
                sample_rate=config.sample_rate,
                model=spec.model_path.stem,
                description=spec.description,
                aliases=spec.aliases,
            )
            for alias in spec.aliases:
                self._alias[alias] = spec.id

    def voices(self) -> list[VoiceInfo]:
        return list(self._info.values())

    def resolve(self, voice: str) -> VoiceInfo:
        """Map a voice id or alias to the voice; raise ``UnknownVoiceError`` otherwise."""
        key = self._alias.get(voice, voice)
        if key not in self._info:
            raise UnknownVoiceError(voice)
        return self._info[key]

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Iterator[PCM16]:
        if not SPEED_MIN <= speed <= SPEED_MAX:
            raise ValueError(f"speed must be within {SPEED_MIN}..{SPEED_MAX}")
        info = self.resolve(voice)
        piper_voice = self._voices[info.id]
        syn = SynthesisConfig(length_scale=piper_voice.config.length_scale / speed)
        for chunk in piper_voice.synthesize(text, syn):
            yield np.asarray(chunk.audio_int16_array, dtype=np.int16)


def load(settings: Settings, executor: Executor) -> tuple[PiperTTS, ModelInfo]:
    """``tts_engine = "piper"``: the packaged joe voice, in English and reading Shona text."""
    model, config = models.piper_joe()
    specs = [
        VoiceSpec("joe", model, config, "en", "en-us", "US English, male (Piper joe medium)", OPENAI_VOICE_NAMES),
        VoiceSpec("joe-sn", model, config, "sn", "sw", "Shona text read by the joe voice (espeak-ng sw)"),
    ]
    return PiperTTS(specs, threads=settings.tts_threads or settings.run_threads), models.file_info(
        model.stem, "tts", model, None, ["speech"]
    )
