"""The one JSON error shape every HTTP route answers with.

``{"error": {"message", "type", "param", "code"}}`` is what OpenAI clients already parse, so the
same shape serves the OpenAI-compatible routes and our own.
"""

from __future__ import annotations

import json
from typing import Literal

from aiohttp import web

ErrorType = Literal["invalid_request_error", "api_error", "overloaded_error", "authentication_error", "not_found_error"]


class ApiError(Exception):
    """An error a handler raises; the middleware renders it in the shared shape."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    """Shorthand for the common 400."""
    return ApiError(message, status=400, param=param, code=code)
