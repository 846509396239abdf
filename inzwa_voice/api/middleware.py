"""Request middleware: ids and logs, errors in one shape, API keys, rate limits, metrics.

Order matters and is fixed in ``app.build_app``: the outermost layer assigns the request id and
renders every failure (including aiohttp's own 404/405/413) as the JSON error shape, so nothing
below it can leak an HTML error page or a stack trace.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from inzwa_voice.config import Settings
from inzwa_voice.errors import ApiError
from inzwa_voice.logs import key_fingerprint, request_id
from inzwa_voice.telemetry import Metrics

log = logging.getLogger("inzwa_voice.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EXTRA_HEADERS = web.RequestKey("extra_headers", dict[str, str])
PREPARED = web.RequestKey("prepared", web.StreamResponse)

# Paths anyone may read: probes, scrapers and the API description.
PUBLIC_PATHS = ("/health", "/metrics", "/openapi.json")
PUBLIC_PREFIXES = ("/widget",)
# Routes that authenticate callers themselves: the WebSocket call checks its start message's
# ``auth`` (browsers cannot set headers on a WebSocket), Twilio's routes check its signature, and
# a WebRTC offer carries a short-lived call token that the helpline's web server obtained.
SELF_AUTHENTICATED_PREFIXES = ("/v1/ws", "/v1/twilio/", "/v1/webrtc/offer")
# Routes that start a call (or mint the widget's token for one): rate-limited per client address.
CALL_PATHS = frozenset({"/v1/ws", "/v1/twilio/voice", "/v1/twilio/media", "/v1/webrtc/offer"})
WIDGET_TOKEN_PATH = "/widget/token"
METRICS_PATH = "/metrics"
# Routes only an admin key opens once keys are on.
ADMIN_PREFIX = "/v1/admin/"

_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found_error", "no route matches this path"),
    405: ("invalid_request_error", "method not allowed on this path"),
    413: ("invalid_request_error", "request body is too large"),
    415: ("invalid_request_error", "unsupported content type"),
}


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    type_, message = _HTTP_ERRORS.get(exc.status, ("invalid_request_error", exc.reason))
    if exc.status == 413:
        message = f"request body is too large ({exc.text or 'over the limit'})"
    # A 405 must say which methods the path has (RFC 9110 15.5.6).
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    code = exc.reason.lower().replace(" ", "_")
    return ApiError(message, status=exc.status, type=type_, code=code, headers=headers)  # type: ignore[arg-type]


def error_middleware(metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        token = request_id.set(rid)
        request[EXTRA_HEADERS] = {"X-Request-ID": rid}
        started = time.perf_counter()
        route = _route_name(request)
        status = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:  # a redirect (``/widget`` to ``/widget/``): an answer, not a failure
                    status = exc.status
                    raise
                response = _error_response(request, exc, route)
            except Exception as exc:
                response = _error_response(request, exc, route)
            status = response.status
            if status >= 400:
                metrics.http_errors.labels(route, _error_type(status)).inc()
            return response
        finally:
            elapsed = time.perf_counter() - started
            metrics.http_requests.labels(route, request.method, str(status)).inc()
            metrics.http_duration.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                    "remote": request.remote,
                },
            )
            request_id.reset(token)

    return middleware


def _error_response(request: web.Request, exc: Exception, route: str) -> web.StreamResponse:
    """Turn any failure into the JSON error shape, or end a stream whose headers are out."""
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, web.HTTPException):
        error = _from_http_exception(exc)
    elif isinstance(exc, TimeoutError):
        log.warning("model timeout", extra={"route": route, "error": str(exc)})
        error = ApiError(f"the model did not answer in time: {exc}", status=504, type="api_error")
    else:
        log.exception("unhandled error", extra={"route": route})
        error = ApiError("internal error", status=500, type="api_error")
    prepared: web.StreamResponse | None = request.get(PREPARED)
    if prepared is None:
        return error.response()
    # Headers and part of the body are out: cut the connection so the client sees a truncated
    # body rather than a second response inside the first.
    log.warning("stream ended by an error", extra={"route": route, "error": error.message})
    if request.transport is not None:
        request.transport.close()
    return prepared


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status in (429, 503):
        return "overloaded_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES + SELF_AUTHENTICATED_PREFIXES)


def _presented_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def _matching_key(presented: str, keys: list[str]) -> str | None:
    """The configured key ``presented`` is, compared in constant time; None if none."""
    for key in keys:
        if presented and hmac.compare_digest(presented.encode(), key.encode()):
            return key
    return None


def _unauthorized(message: str, code: str = "invalid_api_key") -> ApiError:
    return ApiError(message, status=401, type="authentication_error", code=code, headers={"WWW-Authenticate": "Bearer"})


def client_identity(request: web.Request, settings: Settings) -> str:
    """The caller's identity for rate limits: which key it presented, or its address when keys are off.

    Scopes: an admin key (``admin_keys``) opens every route; an API key (``api_keys``) opens the
    engine APIs and call-token minting, never ``/v1/admin/*`` (transcripts, recordings, hang-up,
    reload), which with keys on needs an admin key even when no admin key is configured.
    """
    if not (settings.api_keys or settings.admin_keys):
        return "ip:" + (request.remote or "unknown")
    presented = _presented_key(request)
    key = _matching_key(presented, settings.admin_keys)
    if key is None and not request.path.startswith(ADMIN_PREFIX):
        key = _matching_key(presented, settings.api_keys)
    if key is not None:
        return key_fingerprint(key)
    if request.path.startswith(ADMIN_PREFIX) and _matching_key(presented, settings.api_keys):
        raise ApiError(
            "this route needs an admin key (INZWA_ADMIN_KEYS); an API key does not open /v1/admin",
            status=403,
            type="authentication_error",
            code="admin_key_required",
        )
    raise _unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")


@dataclass
class TokenBucket:
    """Per-identity bucket refilled continuously at ``rate`` tokens a minute."""

    capacity: int
    tokens: float
    updated: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.capacity / 60.0)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Bounded map of token buckets; the least recently used identity is forgotten first."""

    MAX_IDENTITIES = 10_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, identity: str) -> tuple[bool, int]:
        now = time.monotonic()
        bucket = self._buckets.pop(identity, None) or TokenBucket(self.per_minute, float(self.per_minute), now)
        self._buckets[identity] = bucket
        if len(self._buckets) > self.MAX_IDENTITIES:
            self._buckets.pop(next(iter(self._buckets)))
        allowed = bucket.take(now)
        return allowed, int(bucket.tokens)

    def enforce(self, identity: str, metrics: Metrics, what: str) -> dict[str, str]:
        """The rate headers for this request, or the 429 once ``identity`` used its minute."""
        allowed, remaining = self.check(identity)
        headers = {"X-RateLimit-Limit": str(self.per_minute), "X-RateLimit-Remaining": str(remaining)}
        if not allowed:
            metrics.rate_limited.inc()
            raise ApiError(
                f"rate limit of {self.per_minute} {what} per minute exceeded",
                status=429,
                type="overloaded_error",
                code="rate_limit_exceeded",
                headers={**headers, "Retry-After": str(math.ceil(60 / self.per_minute))},
            )
        return headers


def _limiter(per_minute: int) -> RateLimiter | None:
    return RateLimiter(per_minute) if per_minute else None


def _check_metrics_key(request: web.Request, settings: Settings) -> None:
    """``/metrics`` behind ``metrics_key`` when one is set (an admin key opens it too)."""
    if settings.metrics_key is None:
        return
    presented = _presented_key(request)
    if _matching_key(presented, [settings.metrics_key, *settings.admin_keys]) is None:
        raise _unauthorized("/metrics needs the metrics key: send 'Authorization: Bearer <key>'", "invalid_metrics_key")


def auth_middleware(settings: Settings, metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    """Keys by scope, then the rate limits: per key (or address) on the APIs, per address on
    every route that starts a call, and on the widget's open token route. All of it is decided
    from the request line and headers, before any body is read."""
    limiter = _limiter(settings.rate_limit_per_minute)
    calls = _limiter(settings.call_rate_limit_per_minute)
    widget_tokens = _limiter(settings.widget_tokens_per_minute)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method == "OPTIONS":
            return await handler(request)
        address = "ip:" + (request.remote or "unknown")
        if path == METRICS_PATH:
            _check_metrics_key(request, settings)
        elif path == WIDGET_TOKEN_PATH:
            if widget_tokens is None:
                raise ApiError("the widget's token route is off", status=404, type="not_found_error", code="not_found")
            request[EXTRA_HEADERS].update(widget_tokens.enforce(address, metrics, "widget call tokens"))
        elif path in CALL_PATHS:
            if calls is not None:
                request[EXTRA_HEADERS].update(calls.enforce(address, metrics, "calls"))
        elif not _is_public(path):
            identity = client_identity(request, settings)
            if limiter is not None:
                request[EXTRA_HEADERS].update(limiter.enforce(identity, metrics, "requests"))
        return await handler(request)

    return middleware


def connection_cap_middleware(settings: Settings, metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    """At most ``max_connections_per_address`` requests in flight from one address (a call is
    one request for as long as it lasts); beyond it a 429.

    Together with the header timeout (``http_header_timeout_s``: a connection that has not
    finished a request's headers by then is closed), one address cannot hold the gateway's
    connections: idle and half-open ones time out, busy ones are counted here.
    """
    limit = settings.max_connections_per_address
    in_flight: dict[str, int] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not limit:
            return await handler(request)
        address = request.remote or "unknown"
        if in_flight.get(address, 0) >= limit:
            metrics.rate_limited.inc()
            log.warning("connection cap", extra={"remote": address, "limit": limit})
            raise ApiError(
                f"too many requests in flight from this address (limit {limit})",
                status=429,
                type="overloaded_error",
                code="too_many_connections",
                headers={"Retry-After": "1"},
            )
        in_flight[address] = in_flight.get(address, 0) + 1
        try:
            return await handler(request)
        finally:
            in_flight[address] -= 1
            if not in_flight[address]:
                del in_flight[address]

    return middleware


def warn_if_admin_open(settings: Settings) -> None:
    """A loud WARNING when the admin API (transcripts, hang-up) answers anyone who can reach a
    non-loopback address: no admin key and no API key is configured."""
    if settings.api_keys or settings.admin_keys:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        log.warning(
            "ADMIN API OPEN: no INZWA_ADMIN_KEYS or INZWA_API_KEYS, and the gateway listens on %s: anyone who "
            "reaches it can read every transcript and hang up calls. Set INZWA_ADMIN_KEYS (and INZWA_API_KEYS).",
            settings.host,
            extra={"host": settings.host},
        )


async def add_extra_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: streamed responses get the id and rate headers too.

    It also remembers the prepared response: once headers are out, a failure can no longer be
    answered with an error response, and the error middleware must end the stream instead.
    """
    response.headers.update(request.get(EXTRA_HEADERS, {}))
    request[PREPARED] = response
