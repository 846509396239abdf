"""Matching what a caller said (as ASR heard it) to an authored entry or an intent.

Whisper base hears Shona phonetically close but misspelled and split in odd places: the question
"Kiriniki inovhura nguva ngani mangwana?" comes back as "Ki ni ki inafuangubangani man guayah".
So matching is lexical and forgiving, and never a guess:

* **Spelling is folded** before anything is compared (:func:`normalize`, :func:`fold`): lower
  case, no punctuation or diacritics, ``ng'`` as ``ng``, and the confusions Whisper makes on
  Shona folded together (``l``/``r``, the labials ``b``/``p``/``v``/``f``, breathy ``vh``/``bh``/
  ``mh``/``nh``/``dh``, doubled letters, ``c``/``q``/``k``). Harsher folds (dropping ``h`` or
  ``r``, voicing, vowels) were measured and lost more than they won: they are in
  :class:`Spelling`, off.
* **Three views of the text** are scored against every example question: BM25 over its words
  (English suffixes stemmed, function words down-weighted), TF-IDF cosine over character
  2-4-grams of the text with its spaces removed, so "Ki ni ki" still meets "Kiriniki" and words
  that ASR split or joined keep most of their n-grams; and, for the few best entries, a local
  alignment of the sounds (:class:`_Aligner`) with partial credit for the confusions above. An
  entry scores mostly as all its examples taken together (the sum of their vectors) and partly
  as its single best example: with a handful of examples per entry, the whole entry generalizes
  to new phrasings far better than its nearest example.
* **Meaning, for English**: lexical views cannot tell that "Is this phone call being recorded?"
  is about privacy, not cost. A Matcher built with ``embed`` (a sentence embedder handed in by
  the conversation layer: this package imports no engine) keeps a unit vector per English example
  question, made once when the knowledge base loads; a call in English passes its words' vector
  to :meth:`Matcher.match`, and an entry's score mixes in the cosine of its examples' vectors,
  mostly the best example's and partly their sum's. Such a score runs higher for
  unrelated text too, so it has its own threshold and margin. Shona is lexical only: no packaged
  embedder knows Shona.
* **A match is confident** only when its score (0..1) reaches a threshold *and* it is clear of
  the runner-up by a margin. An unsure match is never spoken as if sure: :func:`understand`
  returns ``unsure`` and the gateway asks "did you mean ...?", offers the menu or a person.

The defaults were chosen on the "tune" half of ``tests/knowledge_eval/questions.yaml`` with
``inzwa-voice eval knowledge`` (``knowledge/evaluate.py``) and checked on the other half (the
meaning's weight, threshold and margin from the middle of a broad range of settings that did
equally well there, rather than an edge of it). One
:class:`Matcher` is built per knowledge base (and one for the intents) and is read-only
afterwards, so calls share it across threads. Deterministic; numpy only, no model of its own.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from inzwa_voice.knowledge.base import Entry

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float32]
Embed = Callable[[Sequence[str]], Vector]
"""Texts to unit sentence vectors ``[len(texts), d]`` (``engines.base.Embedder.embed``)."""

MAX_TEXT_CHARS = 600
"""Longer caller text is cut before matching: one turn never needs more, and the cost stays bounded."""

# --- spelling ---------------------------------------------------------------------------------

_APOSTROPHES = "'’‘`´ʼ"
_NON_WORD = re.compile(r"[^a-z0-9]+")
_DOUBLED = re.compile(r"([a-z])\1+")


def normalize(text: str) -> str:
    """Lower case, diacritics and punctuation removed, apostrophes dropped (``ng'ombe`` ->
    ``ngombe``, ``don't`` -> ``dont``), words separated by single spaces."""
    text = unicodedata.normalize("NFKD", text[:MAX_TEXT_CHARS])
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    for mark in _APOSTROPHES:
        text = text.replace(mark, "")
    return _NON_WORD.sub(" ", text).strip()


@dataclass(frozen=True)
class Spelling:
    """Which folds :func:`fold` applies; each was measured on the evaluation set (see
    ``knowledge/evaluate.py``) and the defaults are the ones that helped."""

    r_l: bool = True  # Shona has no /l/: Whisper writes "l" for "r" ("kiriniki" / "kliniki")
    breathy: bool = True  # vh bh mh nh dh -> v b m n d (Whisper does not hear the breathy "h")
    labials: bool = True  # v b f p folded to one: "inovhura" heard as "inapura", "inafua"
    doubled: bool = True  # "aa" -> "a", "kk" -> "k": Shona long vowels and Whisper's doubled letters
    c_k: bool = True  # c (not in "ch") and q -> k: "clinic" / "kiriniki"
    vowels: bool = False  # e/i and o/u folded: Whisper confuses them, but so do meanings
    h_drop: bool = False  # "h" dropped everywhere ("hofisi" heard "ofisie", "pane" heard "hane")
    nasal_stops: bool = False  # nd mb ng(before a consonant) -> n m n: "ndingawana" heard "ninga"
    voicing: bool = False  # g/k, d/t, z/s folded, ts tz dz -> s: "rubatsiro" heard "batziya"
    glides: bool = False  # w -> u and y -> i: "mangwanani" heard "manguanani"
    r_drop: bool = False  # r (and l) dropped: "here" heard "hei", "rubatsiro" heard "ubatio"


_BREATHY = re.compile(r"([vbmnd])h")
_LABIAL = re.compile(r"[bfpv]")
_C_NOT_CH = re.compile(r"c(?!h)")
_AFFRICATE = re.compile(r"t[sz]|dz|ds")
_VOICING = str.maketrans({"g": "k", "d": "t", "z": "s"})


def fold(text: str, spelling: Spelling = Spelling()) -> str:
    """``normalize`` and then fold the spellings ASR confuses, so that both sides of a comparison
    are spelled the same way. Spaces are kept (the word view needs them)."""
    text = normalize(text)
    if spelling.r_l:
        text = text.replace("l", "r")
    if spelling.c_k:
        text = _C_NOT_CH.sub("k", text).replace("q", "k")
    if spelling.labials:
        text = _LABIAL.sub("b", text)
    if spelling.breathy:
        text = _BREATHY.sub(r"\1", text)
    if spelling.vowels:
        text = text.replace("e", "i").replace("o", "u")
    if spelling.nasal_stops:
        text = text.replace("nd", "n").replace("mb", "m")
    if spelling.voicing:
        text = _AFFRICATE.sub("s", text)
        text = text.translate(_VOICING)
    if spelling.glides:
        text = text.replace("w", "u").replace("y", "i")
    if spelling.r_drop:
        text = text.replace("r", "").replace("l", "")
    if spelling.h_drop:
        text = text.replace("h", "")
    if spelling.doubled:
        text = _DOUBLED.sub(r"\1", text)
    return text


# English function words, and Shona particles and greetings that say nothing about the topic.
_STOPWORDS_TEXT = """
    a an the is are am was be been being do does did i me my we our you your it this that there
    to of in on at for with and or but if so can could would will shall should may might please hi
    hello hey okay ok um uh just about some any what how who when which
    here ndapota mhoro mhoroi makadii sei zvakanaka ko ka kuti kana uye ne na
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
"""Words whose weight ``MatchParams.stopword_weight`` lowers (spelled as :func:`fold` spells them)."""

_SUFFIXES = ("ings", "ing", "ed", "es", "s")


def stem(word: str) -> str:
    """A light English stemmer: ``recorded``/``recording``/``records`` -> ``record``. Shona words
    end in a vowel and pass unchanged."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def char_ngrams(folded: str, sizes: Sequence[int]) -> Counter[str]:
    """Character n-grams of ``folded`` with its spaces removed, with ``^``/``$`` marking the ends."""
    joined = "^" + folded.replace(" ", "") + "$"
    grams: Counter[str] = Counter()
    for n in sizes:
        grams.update(joined[i : i + n] for i in range(len(joined) - n + 1))
    return grams


# --- parameters and results --------------------------------------------------------------------


@dataclass(frozen=True)
class MatchParams:
    """How text is compared and when a match counts as confident. The defaults are the ones
    measured best on the evaluation set's tune half; 0 turns a weighted view off."""

    spelling: Spelling = field(default_factory=Spelling)
    ngram_sizes: tuple[int, ...] = (2, 3, 4)
    word_weight: float = 0.2  # score = w * words (BM25) + (1 - w) * character n-grams
    bm25_k1: float = 1.2
    bm25_b: float = 0.5
    other_language_weight: float = 0.9  # an example in another language than the call's counts this much
    answer_weight: float = 0.0  # the entry's answer texts as a weak extra example (0: unused)
    topic_weight: float = 0.0  # the entry's topic as an extra example (0: unused)
    centroid_weight: float = 0.85  # score = (1 - c) * best example + c * all the entry's examples as one
    stopword_weight: float = 0.3  # a function word ("the", "is", "here", "ndapota") counts this much
    stem: bool = True  # English suffixes (-s, -ed, -ing, ...) cut from words
    align_weight: float = 0.3  # score = (1 - a) * the above + a * phonetic alignment (0: unused)
    align_languages: tuple[str, ...] | None = None  # calls in these languages use the alignment (None: all)
    align_top: int = 3  # the alignment scores only the examples of this many best entries so far
    align_gap: float = 1.0
    align_similar: float = 0.5  # a sound confused with another of its group (b/p/v/f/w, k/g/c/q, ...)
    align_vowel: float = 0.5  # a vowel heard as another vowel
    meaning_weight: float = 0.65  # score = (1 - m) * the above + m * meaning (a call with a query vector)
    meaning_centroid: float = 0.3  # meaning = (1 - c) * best example's cosine + c * the examples' sum's
    meaning_languages: tuple[str, ...] = ("en",)  # examples in these languages get vectors; their calls use them
    threshold: float = 0.2  # confident only at this score or above ...
    margin: float = 0.08  # ... and this much above the runner-up
    meaning_threshold: float = 0.35  # the same two for a score with meaning mixed in
    meaning_margin: float = 0.06
    floor: float = 0.08  # below this the best candidate is no candidate at all
    min_chars: int = 2  # text with fewer letters and digits than this matches nothing (ASR's "a", "Hm")


@dataclass(frozen=True)
class Match:
    """The best entry for a text, how sure, and what came second."""

    entry: Entry
    score: float  # 0..1
    confident: bool
    question: str  # the example question that matched best
    runner_up: Entry | None = None
    runner_up_score: float = 0.0
    meaning: bool = False  # the sentence vectors counted in the score

    @property
    def id(self) -> str:
        return self.entry.id


@dataclass(frozen=True)
class _Doc:
    entry_index: int
    language: str | None
    text: str
    weight: float  # examples 1.0, answers ``answer_weight``


class _Postings:
    """Sparse rows (features -> documents) as numpy arrays, for a fast weighted sum."""

    def __init__(self, rows: Sequence[dict[str, float]]) -> None:
        lists: dict[str, tuple[list[int], list[float]]] = {}
        for doc, row in enumerate(rows):
            for feature, value in row.items():
                idx, vals = lists.setdefault(feature, ([], []))
                idx.append(doc)
                vals.append(value)
        self._rows = len(rows)
        self._index: dict[str, tuple[IntArray, FloatArray]] = {
            f: (np.asarray(i, dtype=np.int64), np.asarray(v, dtype=np.float64)) for f, (i, v) in lists.items()
        }

    def __contains__(self, feature: str) -> bool:
        return feature in self._index

    def dot(self, query: dict[str, float]) -> FloatArray:
        idx: list[IntArray] = []
        vals: list[FloatArray] = []
        for feature, weight in query.items():
            hit = self._index.get(feature)
            if hit is not None:
                idx.append(hit[0])
                vals.append(hit[1] * weight)
        if not idx:
            return np.zeros(self._rows)
        summed = np.bincount(np.concatenate(idx), weights=np.concatenate(vals), minlength=self._rows)
        return np.asarray(summed, dtype=np.float64)


MAX_ALIGN_CHARS = 160
"""The alignment reads at most this many letters of the caller's text (its cost grows with them)."""
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SEPARATOR = len(_ALPHABET)
_CODE = {c: i for i, c in enumerate(_ALPHABET)}
_SOUND_GROUPS = ("bpvfw", "kgcq", "td", "szjx", "rl", "mn", "hy")
_VOWELS = "aeiou"


def _codes(folded: str) -> IntArray:
    return np.asarray([_CODE[c] for c in folded if c in _CODE], dtype=np.int64)


class _Aligner:
    """Local alignment (Smith-Waterman, linear gaps) of the query's sounds against each example's,
    spaces removed, with partial credit for sounds ASR confuses: "Ki ni ki inafuangubangani"
    aligns along "kiriniki inovhura nguva ngani". Vectorized over all examples at once: one numpy
    pass per query character, the horizontal gap by a running maximum kept inside each example.
    The score of an example is the alignment divided by the geometric mean of the two texts'
    scores against themselves: 1 for the same sounds, near 0 for unrelated ones."""

    def __init__(self, folded: Sequence[str], params: MatchParams) -> None:
        size = len(_ALPHABET) + 1
        sub = np.full((size, size), -1.0)
        for group in _SOUND_GROUPS:
            for a in group:
                for b in group:
                    sub[_CODE[a], _CODE[b]] = params.align_similar
        for a in _VOWELS:
            for b in _VOWELS:
                sub[_CODE[a], _CODE[b]] = params.align_vowel
        np.fill_diagonal(sub, 2.0)
        sub[_SEPARATOR, :] = sub[:, _SEPARATOR] = -1e9
        self._sub = sub
        self._gap = params.align_gap
        self._examples = [_codes(f.replace(" ", "")) for f in folded]
        self._self = np.asarray([max(float(sub[c, c].sum()), 1.0) for c in self._examples])

    def scores(self, folded_query: str, examples: Sequence[int]) -> FloatArray:
        query = _codes(folded_query.replace(" ", ""))[:MAX_ALIGN_CHARS]
        out = np.zeros(len(examples))
        if not len(query) or not examples:
            return out
        parts = [np.concatenate(([_SEPARATOR], self._examples[e])) for e in examples]
        chars = np.concatenate(parts)
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
        segment = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
        separator = chars == _SEPARATOR
        # A later example's values always beat an earlier one's in the running maximum.
        offset = np.arange(len(chars)) * self._gap + segment * 1e7
        h = np.zeros(len(chars))
        best = np.zeros(len(chars))
        diagonal = np.zeros(len(chars))
        for ch in query:
            diagonal[1:] = h[:-1]
            x = np.maximum(np.maximum(diagonal + self._sub[ch, chars], h - self._gap), 0.0)
            x[separator] = 0.0
            h = np.maximum.accumulate(x + offset) - offset
            h[separator] = 0.0
            np.maximum(best, h, out=best)
        raw = np.maximum.reduceat(best, starts)
        self_query = float(self._sub[query, query].sum())
        return np.asarray(raw / np.sqrt(self_query * self._self[list(examples)]), dtype=np.float64)


class Matcher:
    """Scores text against every example question of a fixed set of entries."""

    def __init__(
        self, entries: Iterable[Entry], params: MatchParams | None = None, *, embed: Embed | None = None
    ) -> None:
        self.params = p = params or MatchParams()
        self.entries: tuple[Entry, ...] = tuple(entries)
        docs: list[_Doc] = []
        for index, entry in enumerate(self.entries):
            for language, questions in entry.questions.items():
                docs.extend(_Doc(index, language, q, 1.0) for q in questions if normalize(q))
            if p.answer_weight > 0:
                for language, answer in entry.answers.items():
                    if normalize(answer):
                        docs.append(_Doc(index, language, answer, p.answer_weight))
            if p.topic_weight > 0:
                for language, topic in entry.topics.items():
                    if normalize(topic):
                        docs.append(_Doc(index, language, topic, p.topic_weight))
        self._docs = docs
        self._doc_entry: IntArray = np.asarray([d.entry_index for d in docs], dtype=np.int64)
        self._doc_weight: FloatArray = np.asarray([d.weight for d in docs], dtype=np.float64)
        languages = sorted({d.language for d in docs if d.language is not None})
        self._language_rows = {
            lang: np.asarray([d.language not in (None, lang) for d in docs], dtype=bool) for lang in languages
        }
        folded = [fold(d.text, p.spelling) for d in docs]
        self._stopwords = frozenset(fold(w, p.spelling) for w in STOPWORDS)
        words = [self._words_of(f) for f in folded]
        grams = [self._grams_of(f) for f in folded]
        self._build_words(words)
        self._build_grams(grams)
        self._build_centroids(words, grams)
        self._aligner = _Aligner(folded, p) if p.align_weight > 0 else None
        self._entry_docs = [np.flatnonzero(self._doc_entry == i) for i in range(len(self.entries))]
        self._build_vectors(embed)

    def _words_of(self, folded: str) -> list[str]:
        words = folded.split()
        return [stem(w) for w in words] if self.params.stem else words

    def _idf_weight(self, word: str, idf: float) -> float:
        return idf * self.params.stopword_weight if word in self._stopwords else idf

    def _grams_of(self, folded: str) -> Counter[str]:
        return char_ngrams(folded, self.params.ngram_sizes)

    @staticmethod
    def _df(docs: Sequence[Iterable[str]]) -> tuple[Counter[str], int]:
        df: Counter[str] = Counter()
        for features in docs:
            df.update(set(features))
        return df, max(len(docs), 1)

    # --- index ---
    def _build_words(self, docs: list[list[str]]) -> None:
        df, n = self._df(docs)
        self._word_idf = {w: self._idf_weight(w, math.log(1 + (n - c + 0.5) / (c + 0.5))) for w, c in df.items()}
        self._word_idf_oov = math.log(1 + (n + 0.5) / 0.5)  # a word no example has: as rare as can be
        avgdl = sum(len(d) for d in docs) / max(len(docs), 1) or 1.0
        k1, b = self.params.bm25_k1, self.params.bm25_b
        rows: list[dict[str, float]] = []
        for words in docs:
            tf = Counter(words)
            norm = k1 * (1 - b + b * len(words) / avgdl)
            rows.append({w: self._word_idf[w] * c * (k1 + 1) / (c + norm) for w, c in tf.items()})
        self._words = _Postings(rows)

    def _build_grams(self, docs: list[Counter[str]]) -> None:
        df, n = self._df([g.keys() for g in docs])
        self._gram_idf = {g: math.log((1 + n) / (1 + c)) + 1 for g, c in df.items()}
        self._gram_idf_oov = math.log(1 + n) + 1
        self._gram_rows = [
            self._unit({g: (1 + math.log(c)) * self._gram_idf[g] for g, c in grams.items()}) for grams in docs
        ]
        self._grams = _Postings(self._gram_rows)

    def _build_centroids(self, words: list[list[str]], grams: list[Counter[str]]) -> None:
        """Each entry as one text: the sum of its examples' unit vectors, made unit again."""
        word_sum: dict[int, Counter[str]] = {}
        gram_sum: dict[int, dict[str, float]] = {}
        for doc, w, row in zip(self._docs, words, self._gram_rows, strict=True):
            word_sum.setdefault(doc.entry_index, Counter()).update(w)
            acc = gram_sum.setdefault(doc.entry_index, {})
            for g, v in row.items():
                acc[g] = acc.get(g, 0.0) + v * doc.weight
        n = len(self.entries)
        self._centroid_words = _Postings(
            [
                self._unit({t: (1 + math.log(c)) * self._word_idf[t] for t, c in word_sum.get(i, Counter()).items()})
                for i in range(n)
            ]
        )
        self._centroid_grams = _Postings([self._unit(gram_sum.get(i, {})) for i in range(n)])

    def _build_vectors(self, embed: Embed | None) -> None:
        """One sentence vector per example question in ``meaning_languages`` (one embedder run
        each, once per knowledge base load)."""
        p = self.params
        rows = [i for i, d in enumerate(self._docs) if d.weight == 1.0 and d.language in p.meaning_languages]
        self._vector_docs: IntArray = np.asarray(rows, dtype=np.int64)
        self._vectors: Vector | None = None
        self._centroid_vectors: Vector | None = None
        if embed is None or p.meaning_weight <= 0 or not rows:
            return
        self._vectors = np.asarray(embed([self._docs[i].text for i in rows]), dtype=np.float32)
        sums = np.zeros((len(self.entries), self._vectors.shape[1]), dtype=np.float32)
        np.add.at(sums, self._doc_entry[self._vector_docs], self._vectors)
        lengths = np.linalg.norm(sums, axis=1, keepdims=True)
        self._centroid_vectors = np.asarray(sums / np.where(lengths > 0, lengths, 1.0), dtype=np.float32)

    def wants_vector(self, language: str | None) -> bool:
        """Whether :meth:`match` for a call in ``language`` uses the query's sentence vector."""
        return self._vectors is not None and language in self.params.meaning_languages

    def _meaning(self, language: str | None, vector: Vector | None) -> bool:
        return vector is not None and self.wants_vector(language)

    @staticmethod
    def _unit(row: dict[str, float]) -> dict[str, float]:
        length = math.sqrt(sum(v * v for v in row.values())) or 1.0
        return {k: v / length for k, v in row.items()}

    # --- scoring ---
    def _word_scores(self, words: list[str]) -> FloatArray:
        """BM25 of each document for the query, divided by what a document holding each query
        word once (at average length) would score: 0..1, and an unknown word lowers it."""
        unique = set(words)
        if not unique:
            return np.zeros(len(self._docs))
        ideal = sum(self._word_idf.get(w, self._idf_weight(w, self._word_idf_oov)) for w in unique)
        raw = self._words.dot(dict.fromkeys(unique, 1.0))
        return np.minimum(raw / ideal, 1.0)

    def _gram_query(self, grams: Counter[str]) -> dict[str, float]:
        return self._unit({g: (1 + math.log(c)) * self._gram_idf.get(g, self._gram_idf_oov) for g, c in grams.items()})

    def _scores(self, text: str, language: str | None) -> tuple[FloatArray, FloatArray]:
        """The combined score of ``text`` against every example, and against every entry as a whole."""
        p = self.params
        folded = fold(text, p.spelling)
        words = self._words_of(folded)
        gram_query = self._gram_query(self._grams_of(folded))
        w = p.word_weight
        docs = w * self._word_scores(words) + (1 - w) * self._grams.dot(gram_query)
        docs = docs * self._doc_weight
        other = self._language_rows.get(language) if language is not None else None
        if other is not None and p.other_language_weight != 1.0:
            docs = np.where(other, docs * p.other_language_weight, docs)
        if p.centroid_weight > 0:
            tf = Counter(words)
            word_query = self._unit(
                {t: (1 + math.log(c)) * self._word_idf.get(t, self._word_idf_oov) for t, c in tf.items()}
            )
            entries = w * self._centroid_words.dot(word_query) + (1 - w) * self._centroid_grams.dot(gram_query)
        else:
            entries = np.zeros(len(self.entries))
        return np.asarray(docs, dtype=np.float64), np.asarray(entries, dtype=np.float64)

    def _rank(self, text: str, language: str | None, vector: Vector | None) -> tuple[list[int], FloatArray, IntArray]:
        """Entry indexes best first, their scores, and each one's best example."""
        n = len(self.entries)
        if not self._docs or len(normalize(text).replace(" ", "")) < self.params.min_chars:
            return [], np.zeros(n), np.full(n, -1, dtype=np.int64)
        docs, whole = self._scores(text, language)
        # Each entry's best example: sort by entry, then score (best first), take each run's first.
        by_entry = np.lexsort((-docs, self._doc_entry))
        entries, first = np.unique(self._doc_entry[by_entry], return_index=True)
        best_doc = np.full(n, -1, dtype=np.int64)
        best_doc[entries] = by_entry[first]
        best = np.zeros(n)
        best[entries] = docs[best_doc[entries]]
        c = self.params.centroid_weight
        score = (1 - c) * best + c * whole
        if self._aligner is not None and (
            self.params.align_languages is None or language in self.params.align_languages
        ):
            score = self._with_alignment(text, language, score)
        if vector is not None and self._meaning(language, vector):
            score = self._with_meaning(vector, score)
        order = sorted((i for i in range(n) if best_doc[i] >= 0), key=lambda i: (-score[i], i))
        return order, score, best_doc

    def ranked(
        self, text: str, language: str | None = None, vector: Vector | None = None
    ) -> list[tuple[Entry, float, str]]:
        """Every entry with its score and best example, best first (``vector``: see :meth:`match`)."""
        order, score, best_doc = self._rank(text, language, vector)
        return [(self.entries[i], float(score[i]), self._docs[int(best_doc[i])].text) for i in order]

    def _with_alignment(self, text: str, language: str | None, score: FloatArray) -> FloatArray:
        """Mix in the alignment of ``text`` against the examples of the best entries so far; the
        others keep their lexical score, scaled the same way (they rank below anyway)."""
        assert self._aligner is not None
        a = self.params.align_weight
        top = np.argsort(-score, kind="stable")[: self.params.align_top]
        examples = [
            int(d)
            for i in top
            for d in self._entry_docs[i]
            if self._docs[d].weight == 1.0 and (language is None or self._docs[d].language in (None, language))
        ]
        aligned = self._aligner.scores(fold(text, self.params.spelling), examples)
        best = np.zeros(len(self.entries))
        np.maximum.at(best, self._doc_entry[examples], aligned)
        mixed = (1 - a) * score
        mixed[top] += a * best[top]
        return mixed

    def _with_meaning(self, vector: Vector, score: FloatArray) -> FloatArray:
        """Mix in each entry's cosine between ``vector`` and its examples' vectors: the best
        example's and their sum's (below 0 counts as 0: unrelated)."""
        assert self._vectors is not None and self._centroid_vectors is not None
        p = self.params
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        best = np.zeros(len(self.entries))
        np.maximum.at(best, self._doc_entry[self._vector_docs], (self._vectors @ query).astype(np.float64))
        whole = np.maximum(self._centroid_vectors @ query, 0.0).astype(np.float64)
        meaning = np.minimum((1 - p.meaning_centroid) * best + p.meaning_centroid * whole, 1.0)
        return np.asarray((1 - p.meaning_weight) * score + p.meaning_weight * meaning, dtype=np.float64)

    def clear_of(self, score: float, rival: float, *, meaning: bool = False) -> bool:
        """Whether ``score`` is far enough above ``rival`` to be confident (``meaning``: the
        scores have the sentence vectors mixed in)."""
        return score - rival >= (self.params.meaning_margin if meaning else self.params.margin)

    def match(self, text: str, language: str | None = None, vector: Vector | None = None) -> Match | None:
        """The best entry for ``text`` (``language``: the call's, preferred when given), or None
        when nothing reaches the floor. ``vector`` is ``text``'s sentence vector from the same
        embedder the Matcher was built with; it counts where :meth:`wants_vector` says so."""
        order, scores, best_doc = self._rank(text, language, vector)
        if not order or scores[order[0]] < self.params.floor:
            return None
        top = order[0]
        score = float(scores[top])
        second = self.entries[order[1]] if len(order) > 1 else None
        second_score = float(scores[order[1]]) if len(order) > 1 else 0.0
        meaning = self._meaning(language, vector)
        threshold = self.params.meaning_threshold if meaning else self.params.threshold
        confident = score >= threshold and self.clear_of(score, second_score, meaning=meaning)
        question = self._docs[int(best_doc[top])].text
        return Match(self.entries[top], round(score, 4), confident, question, second, round(second_score, 4), meaning)


# --- intents and entries together ---------------------------------------------------------------

Kind = Literal["intent", "entry", "unsure", "nothing"]


@dataclass(frozen=True)
class Understanding:
    """What the gateway makes of one caller turn.

    ``intent``/``entry``: a confident match, act on it or speak its authored answer.
    ``unsure``: something came close (``match``) but not surely: ask "did you mean ...?", offer
    the menu or a person; never speak the answer as if sure. ``nothing``: no candidate at all.
    """

    kind: Kind
    match: Match | None = None  # the chosen (or, when unsure, the closest) candidate
    intent: Match | None = None  # the intents' best, for the record
    entry: Match | None = None  # the knowledge base's best, for the record

    @property
    def id(self) -> str | None:
        return self.match.id if self.match is not None else None

    @property
    def confident(self) -> bool:
        return self.kind in ("intent", "entry")


def understand(
    text: str,
    language: str | None,
    knowledge: Matcher,
    intents: Matcher,
    *,
    entry_over_intent: float = 0.0,
    vector: Vector | None = None,
) -> Understanding:
    """One caller turn: an intent, an entry, unsure or nothing.

    A confident intent wins ("can I talk to a person" must transfer, even when an entry about
    counsellors matches too) unless a confident entry scores more than ``entry_over_intent``
    above it: "yes, how much does the call cost?" is about the cost, not a bare yes. Measured,
    0 (the higher score wins, a tie goes to the intent) did best. A confident entry must also
    be clear of the intents' best by the margin; otherwise ``unsure`` with the closer of the
    two, or ``nothing`` when neither reached the floor. ``vector``: ``text``'s sentence vector,
    for matchers built with an embedder (see :meth:`Matcher.match`).
    """
    intent = intents.match(text, language, vector)
    entry = knowledge.match(text, language, vector)
    if intent is not None and intent.confident:
        if entry is None or entry.score - intent.score <= entry_over_intent:
            return Understanding("intent", intent, intent, entry)
        if entry.confident:
            return Understanding("entry", entry, intent, entry)
    elif (
        entry is not None
        and entry.confident
        and knowledge.clear_of(entry.score, intent.score if intent is not None else 0.0, meaning=entry.meaning)
    ):
        return Understanding("entry", entry, intent, entry)
    candidates = [m for m in (intent, entry) if m is not None]
    if not candidates:
        return Understanding("nothing", None, intent, entry)
    closest = max(candidates, key=lambda m: m.score)
    return Understanding("unsure", closest, intent, entry)
