"""The gateway's record of a simulated call, for legs whose wire carries no events.

Twilio Media Streams and AudioSocket carry audio only, so a caller on them cannot tell a hold
prompt followed by silence from the end of an answer, and would ask its next question while the
answer is still coming (which then lands in that question's pauses). The gateway's call record
(``/v1/admin/calls``) tells them apart: each turn is written as ``answering`` at the endpoint and
rewritten when its reply has ended, with its stage latencies and where the answer came from.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

POLL_S = 0.25
"""How often a caller waiting for its answer reads the record (a small read on the gateway)."""


class CallRecord:
    """One call's record, found by the transport's own id (``external_id``)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, external_id: str) -> None:
        self._http = http
        self._base_url = base_url
        self._external_id = external_id
        self._id: str | None = None
        self._seen = 0  # turns already returned by ``answered``, or before it

    async def turns(self) -> list[dict[str, Any]] | None:
        """The call's turns so far; None when the gateway does not show the call's record
        (admin routes behind a key, or the call not recorded yet)."""
        try:
            if self._id is None:
                query = {"active": "true", "limit": "200"}
                async with self._http.get(self._base_url + "/v1/admin/calls", params=query) as resp:
                    resp.raise_for_status()
                    calls = (await resp.json())["data"]
                ours = [c["id"] for c in calls if c.get("external_id") == self._external_id]
                if not ours:
                    return None
                self._id = str(ours[0])
            async with self._http.get(f"{self._base_url}/v1/admin/calls/{self._id}") as resp:
                resp.raise_for_status()
                return list((await resp.json())["turns"])
        except aiohttp.ClientResponseError:
            return None

    async def answered(self, timeout: float) -> dict[str, Any] | None:
        """The newest turn once every turn since the last call has ended (the answer has
        played, or was cut short); None without a record, or when none ends in ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    turns = await self.turns()
                    if turns is None:
                        return None
                    new = turns[self._seen :]
                    if new and all(t.get("outcome") != "answering" for t in new):
                        self._seen = len(turns)
                        return new[-1]
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            return None
