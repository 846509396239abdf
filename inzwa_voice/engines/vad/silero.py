"""Silero VAD 6 through onnxruntime, without torch.

One ONNX session is shared by all calls (``run`` is thread-safe); each call gets a
``SileroStream`` holding the model's recurrent state and the 64-sample context window that
Silero expects in front of every 512-sample frame at 16 kHz.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import Float32, ModelInfo

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512
_CONTEXT = 64


class SileroStream:
    frame_samples = FRAME_SAMPLES

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT), dtype=np.float32)

    def probability(self, frame: Float32) -> float:
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero needs {FRAME_SAMPLES} samples per frame, got {frame.shape}")
        x = np.concatenate([self._context, frame.reshape(1, -1).astype(np.float32)], axis=1)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -_CONTEXT:]
        return float(out[0][0])


class SileroVAD:
    def __init__(self, model_path: Path) -> None:
        opts = ort.SessionOptions()
        # One thread: VAD runs per 32 ms frame on its own schedule and must never wait
        # behind ASR or TTS for cores (DESIGN §5).
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    def stream(self) -> SileroStream:
        return SileroStream(self._session)


def load(settings: Settings, executor: Executor) -> tuple[SileroVAD, ModelInfo]:
    """``vad_engine = "silero"``: the packaged model unless ``vad_model_path`` names another."""
    path = settings.vad_model_path or models.silero_onnx()
    return SileroVAD(path), models.file_info("silero-vad", "vad", path, None, ["vad"])
