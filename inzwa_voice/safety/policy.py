"""The safety layer around the LLM: what a caller's message may start, and what may reach them.

The default model is a tiny base model that can say anything, and callers may be in crisis, so:
a crisis message never reaches the model (the caller gets the helpline's human number at once),
a request for harm gets a fixed refusal, and every generated phrase is checked before it is
spoken. Matching is bounded in length, so a huge message costs the same as a long one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inzwa_voice.safety.patterns import PatternSet, load_patterns
from inzwa_voice.safety.stream import Decided, cut_role_tag, phrases, strip_markup
from inzwa_voice.safety.templates import Templates, load_templates, template_language

DATA_DIR = Path(__file__).parent / "data"
MAX_INPUT_CHARS = 10_000

EventCallback = Callable[[str, str], None]
"""``(event, detail)``: ``("blocked", category)`` or ``("role_tag", role)``; it must not raise."""


@dataclass(frozen=True)
class SafetyConfig:
    """Per-deployment settings; ``safe_message`` overrides the packaged crisis reply per language."""

    helpline_number: str
    safe_message: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\+?[\d\s().-]*\d[\d\s().-]*", self.helpline_number.strip()):
            raise ValueError(f"helpline_number must be a phone number, got {self.helpline_number!r}")


@dataclass(frozen=True)
class Verdict:
    """What to do with a caller's message; ``message`` is the reply to send instead of the model's."""

    action: Literal["allow", "crisis", "refuse"]
    category: str | None = None
    message: str | None = None
    transfer: bool = False


ALLOW = Verdict("allow")


class Safety:
    """Checks input before generation and filters output after it; load once, share everywhere."""

    def __init__(
        self,
        *,
        crisis: PatternSet,
        blocked_input: PatternSet,
        blocked_output: PatternSet,
        templates: Templates,
        helpline_number: str,
    ) -> None:
        self._crisis = crisis
        self._blocked_input = blocked_input
        self._blocked_output = blocked_output
        self._templates = templates
        self._own_number = _number_pattern(helpline_number)

    @classmethod
    def load(cls, data_dir: Path | None = None, *, config: SafetyConfig) -> Safety:
        """Load and check the data files (default: the packaged ones); raises SafetyDataError."""
        root = DATA_DIR if data_dir is None else data_dir
        return cls(
            crisis=load_patterns(root / "crisis.yaml"),
            blocked_input=load_patterns(root / "blocked_input.yaml"),
            blocked_output=load_patterns(root / "blocked_output.yaml"),
            templates=load_templates(root / "templates.yaml", config.helpline_number, config.safe_message),
            helpline_number=config.helpline_number,
        )

    def check_input(self, text: str, language: str) -> Verdict:
        """Decide on a caller's latest message before any generation; crisis outranks refusal."""
        sample = text[:MAX_INPUT_CHARS]
        reply_language = template_language(language)
        if (category := self._crisis.match(sample)) is not None:
            return Verdict("crisis", category, self._templates.safe_message[reply_language], transfer=True)
        if (category := self._blocked_input.match(sample)) is not None:
            return Verdict("refuse", category, self._templates.refusal[reply_language])
        return ALLOW

    def check_output(self, text: str) -> str | None:
        """The category that blocks generated ``text``, or None; the helpline's own number is fine."""
        return self._blocked_output.match(self._own_number.sub(" ", text[:MAX_INPUT_CHARS]))

    def refusal(self, language: str) -> str:
        return self._templates.refusal[template_language(language)]

    async def filter_stream(
        self,
        tokens: AsyncIterator[str],
        language: str,
        on_event: EventCallback | None = None,
        decided: Decided | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield ``tokens`` as checked phrases (a phrase also ending where ``decided`` says,
        ``stream.phrases``); end at a leaked role tag, or with a refusal when blocked.

        Each phrase is checked together with the one before it, so a pattern split by a phrase
        end ("kill... yourself") is still caught. Stopping, whether here or by the consumer
        closing this generator, closes ``tokens`` so the model stops generating.
        """
        async with aclosing(phrases(tokens, decided=decided)) as stream:
            previous = ""
            async for phrase in stream:
                text, role = cut_role_tag(phrase)
                text = strip_markup(text)
                category = self.check_output(previous + text)
                if category is not None:
                    await stream.aclose()
                    _notify(on_event, "blocked", category)
                    yield self.refusal(language)
                    return
                if text.strip():
                    yield text
                if role is not None:
                    await stream.aclose()
                    _notify(on_event, "role_tag", role)
                    return
                previous = text


def _notify(on_event: EventCallback | None, event: str, detail: str) -> None:
    if on_event is not None:
        on_event(event, detail)


def _number_pattern(number: str) -> re.Pattern[str]:
    """The helpline number as written in any grouping: "0800 123 456", "0800-123456"."""
    digits = re.sub(r"\D", "", number)
    return re.compile(r"(?<!\d)\+?" + r"[\s().-]{0,2}".join(digits) + r"(?!\d)")
