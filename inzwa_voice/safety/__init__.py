"""The safety layer around the LLM: crisis and blocked-request checks on input, a phrase filter on output.

Patterns and replies live in ``data/*.yaml`` so helpline staff can review and extend them
without touching code; ``Safety.load`` validates them at start-up.
"""

from inzwa_voice.safety.datafiles import SafetyDataError
from inzwa_voice.safety.policy import EventCallback, Safety, SafetyConfig, Verdict

__all__ = ["EventCallback", "Safety", "SafetyConfig", "SafetyDataError", "Verdict"]
