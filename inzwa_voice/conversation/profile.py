"""A profile: how the helpline behaves on one call (language, voice, prompts, limits, transfer).

Dialplans (``dialplans/*.yaml``) choose a profile per call; every default below is the
behaviour a call gets when the dialplan says nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    language: str = "sn"
    voice: str = "joe-sn"
    system_prompt: str = "The Helper is kind and calm, and answers in one or two short sentences."
    greeting: str = "Mhoro, mauya kunhare yerubatsiro. Ndingakubatsirei?"
    hold_prompt: str = "Ndapota mirai zvishoma."
    reprompt: str = "Muchiri ipapo here?"
    goodbye: str = "Tatenda nekufona. Chisarai zvakanaka."
    # Where a human takes over (a SIP URI or a phone number); None: no transfer is offered.
    transfer_target: str | None = None
    # Seconds of caller silence after the bot finished before a re-prompt; a second silence
    # as long ends the call.
    idle_timeout_s: float = 12.0
    max_call_s: float = 900.0
    # The hold prompt plays when no answer audio is ready this long after the caller stopped.
    hold_after_s: float = 2.5
