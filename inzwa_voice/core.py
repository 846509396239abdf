"""The call types every layer shares: the leaf of the import graph.

Media, engines, safety, the store and the dialplan import only this (and the standard library,
numpy); the conversation, the legs and the API build on it. One frame size and one pipeline rate
live here, so no two layers can disagree about what a "frame" is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

PCM16 = npt.NDArray[np.int16]
Float32 = npt.NDArray[np.float32]

PIPELINE_RATE: Final = 16000
"""Sample rate of every PCM frame inside the gateway."""
FRAME_MS: Final = 20
"""Duration of one pipeline frame."""
FRAME_SAMPLES: Final = PIPELINE_RATE * FRAME_MS // 1000
"""320 samples: one pipeline frame."""
FRAME_BYTES: Final = FRAME_SAMPLES * 2
"""640 bytes: one pipeline frame as PCM16."""

LegKind = Literal["ws", "twilio", "audiosocket", "sip", "webrtc"]
LEG_KINDS: Final[tuple[LegKind, ...]] = ("ws", "twilio", "audiosocket", "sip", "webrtc")

DTMF_DIGITS: Final = frozenset("0123456789*#")
"""Keypad digits every leg accepts (SIP also carries A-D, which no phone menu here uses)."""


@dataclass(frozen=True)
class CallInfo:
    """Who is calling whom over what: the dialplan matches on these."""

    leg: LegKind
    caller: str = ""
    dialled: str = ""
    external_id: str = ""
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """How the helpline behaves on one call (language, voice, prompts, limits, transfer).

    Dialplans (``inzwa_voice/dialplans/*.yaml``) choose a profile per call; every default below is the
    behaviour a call gets when the dialplan says nothing else.
    """

    name: str = "default"
    language: str = "sn"
    voice: str = "joe-sn"
    system_prompt: str = "The Helper is kind and calm, and answers in one or two short sentences."
    greeting: str = "Mhoro, mauya kunhare yerubatsiro. Ndingakubatsirei?"
    hold_prompt: str = "Ndapota mirai zvishoma."
    # Said to a call the gateway cannot take now (its cores are full), before it is refused.
    busy_message: str = "Ndine urombo, tiri kubatsira vamwe vakawanda parizvino. Ndapota fonai zvakare gare gare."
    reprompt: str = "Muchiri ipapo here?"
    goodbye: str = "Tatenda nekufona. Chisarai zvakanaka."
    # Said when an answer failed (a stage timed out or broke): the caller is never left in silence.
    apology: str = "Ndine urombo, handina kukwanisa kupindura izvozvi. Ndapota taurai zvakare."
    # The knowledge base answers come from: a file path (relative to the dialplan), "helpline"
    # for the packaged sample, or None: no authored answers, the LLM answers everything.
    knowledge: str | None = None
    # Where a human takes over (a SIP URI or a phone number); None: no transfer is offered
    # (after hours: the knowledge base's "closed" answers say when people are available).
    transfer_target: str | None = None
    # Seconds of caller silence after the bot finished before a re-prompt; a second silence
    # as long ends the call.
    idle_timeout_s: float = 12.0
    max_call_s: float = 900.0
    # The hold prompt plays when no answer audio is ready this long after the caller stopped.
    hold_after_s: float = 2.5
    # Record the call (caller and bot in two channels, under INZWA_RECORDINGS_DIR). Off unless
    # the profile says so; a recorded profile must say ``recording_consent``, which the caller
    # hears first, before the greeting.
    recording: bool = False
    recording_consent: str = ""

    @property
    def opening(self) -> str:
        """What the caller hears first: the recording notice (on a recorded call), then the greeting."""
        notice = self.recording_consent if self.recording else ""
        return " ".join(text for text in (notice, self.greeting) if text)
