"""The sentence embedder (packaged all-MiniLM-L6-v2, int8 ONNX): real vectors, bounded input, the
setting that picks it, and the engines' asynchronous ``embed``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import get_args

import numpy as np
import pytest

from inzwa_voice.config import Settings
from inzwa_voice.engines import loading, models
from inzwa_voice.engines.base import Embedder, Float32, Inference
from inzwa_voice.engines.embedding.minilm import DIMENSIONS, MAX_CHARS, MAX_TOKENS, MiniLMEmbedder
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.telemetry import Metrics


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> Embedder:
    with ThreadPoolExecutor(1) as executor:
        loaded = loading.load_embedder(settings, executor)
    assert loaded is not None
    embedder, info = loaded
    assert (info.kind, info.sha256) == ("embedding", models.MINILM_SHA256)
    return embedder


def test_vectors_are_unit_rows_of_the_model_dimension(embedder: Embedder) -> None:
    vectors = embedder.embed(["Where is the nearest clinic?", "Is this call free?", "Ndinoda kutaura nemunhu."])
    assert vectors.shape == (3, DIMENSIONS) == (3, embedder.dimensions)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, DIMENSIONS)


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    recorded, kept, food, goodbye, later = embedder.embed(
        [
            "Is this phone call being recorded?",
            "Do you keep a recording of what I say?",
            "Where can I get food for my children?",
            "Goodbye, thank you.",
            "See you later.",
        ]
    )
    assert recorded @ kept > recorded @ food + 0.2
    assert goodbye @ later > goodbye @ food + 0.2


def test_a_text_gets_the_same_vector_alone_or_with_others() -> None:
    # Two fresh embedders, so neither answers from the vectors it keeps.
    alone = MiniLMEmbedder(*models.minilm_onnx()).embed(["How much does the call cost?"])[0]
    together = MiniLMEmbedder(*models.minilm_onnx()).embed(
        ["A much longer sentence about something else entirely.", "How much does the call cost?"]
    )
    np.testing.assert_array_equal(alone, together[1])


def test_a_kept_vector_is_handed_out_as_a_copy(embedder: Embedder) -> None:
    first = embedder.embed(["Where can I get tested for HIV?"])
    expected = first.copy()
    first[:] = 0.0
    np.testing.assert_array_equal(embedder.embed(["Where can I get tested for HIV?"]), expected)


def test_blank_text_is_zeros_and_long_text_is_cut(embedder: Embedder) -> None:
    blank = embedder.embed(["", "   \n"])
    assert not blank.any()
    words = " ".join(["clinic"] * (MAX_TOKENS + 50))  # more tokens than the model reads
    cut, with_tail = embedder.embed([words, words + " football" * 100])
    np.testing.assert_array_equal(cut, with_tail)  # what follows the 256th token changes nothing
    huge = embedder.embed(["help " * (10 * MAX_CHARS)])[0]
    assert abs(float(np.linalg.norm(huge)) - 1.0) < 1e-5


def test_the_embedding_setting_picks_the_engine_or_none(settings: Settings) -> None:
    assert set(get_args(Settings.model_fields["embedding_engine"].annotation)) == {*loading.EMBEDDING_ENGINES, "none"}
    with ThreadPoolExecutor(1) as executor:
        assert loading.load_embedder(settings.model_copy(update={"embedding_engine": "none"}), executor) is None


class ThreadNoting:
    """The real embedder, noting which thread runs it."""

    def __init__(self, embedder: Embedder) -> None:
        self.name, self.dimensions = embedder.name, embedder.dimensions
        self._embedder = embedder
        self.threads: list[str] = []

    def embed(self, texts: Sequence[str]) -> Float32:
        self.threads.append(threading.current_thread().name)
        return self._embedder.embed(texts)


async def test_the_engines_embed_in_the_inference_executor_and_time_it(engines: Engines) -> None:
    assert engines.embedder is not None
    noting = ThreadNoting(engines.embedder)
    with ThreadPoolExecutor(1, thread_name_prefix="inference") as executor:
        metrics = Metrics()
        mine = Engines(executor, metrics, engines.vad, engines.asr, engines.llm, engines.tts, [], embedder=noting)
        calls: Inference = mine  # the conversation's view of the engines (checked by mypy)
        vectors = await calls.embed(["Where is the clinic?"])
    np.testing.assert_array_equal(vectors, engines.embedder.embed(["Where is the clinic?"]))
    assert len(noting.threads) == 1 and noting.threads[0].startswith("inference")
    count = metrics.registry.get_sample_value(
        "inzwa_engine_inference_seconds_count", {"engine": "embedding", "op": "embed"}
    )
    assert count == 1
