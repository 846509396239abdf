"""The web widget: a page and an embeddable script that call the helpline over WebRTC.

``GET /widget/`` is a ready-made call page; ``widget.js`` (with ``widget.css``) renders the same
widget into any page that includes it. They are three static files read from the package once,
when the routes are added, and served with an ETag so browsers revalidate cheaply: a helpline's
pages pick up a new widget on their next load, without a build step or a cache to purge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

from aiohttp import web
from aiohttp.typedefs import Handler

PREFIX = "/widget/"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    headers: dict[str, str]


# The page loads only its own script and style and talks only to its own gateway.
PAGE_POLICY = "default-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'"
ASSETS = {
    "index.html": ("text/html", {"Content-Security-Policy": PAGE_POLICY}),
    "widget.js": ("text/javascript", {}),
    "widget.css": ("text/css", {}),
}


def _load(name: str) -> Asset:
    content_type, headers = ASSETS[name]
    body = files(__name__).joinpath(name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, content_type, etag, headers)


def _handler(asset: Asset) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers.update(asset.headers)
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)

    return serve


async def _to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(PREFIX)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX.rstrip("/"), _to_page)
    app.router.add_get(PREFIX, _handler(_load("index.html")))
    for name in ("widget.js", "widget.css"):
        app.router.add_get(PREFIX + name, _handler(_load(name)))
