"""Who the local server answers: the Host allow-list, same-origin writes, a body limit, safe headers.

:class:`RequestGuard` is a plain ASGI middleware wrapped around the whole app
(the page, the static files and the API), so every request passes through it
before routing or parsing:

1. **Host allow-list** (DNS rebinding).  The ``Host`` header must name this
   machine by a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any
   127.x.y.z) or by one of the names given when the app was built (the
   ``--host`` value, ``--allow-host`` names).  A page on another site whose name
   was re-pointed at 127.0.0.1 still sends its own name: 400.
2. **Same origin for writes** (cross-site requests).  A request other than
   GET/HEAD (detections, fits, averages, exports) is refused (403) when its
   ``Origin`` (or, without one, its ``Referer``) is not the page's own origin
   ``http://<Host>``, or when the browser marks it ``Sec-Fetch-Site:
   cross-site``/``same-site``.  A request with neither header comes from a
   program (curl, a script), not from a web page, and is served.  GETs of the
   API that a browser marks as cross-site (another site embedding a tile or
   listing) are refused too.
3. **Body limit** (memory).  A declared ``Content-Length`` above the limit is
   answered 413 at once; otherwise the body is read chunk by chunk and counted,
   and the request is answered 413 as soon as the count passes the limit, so
   the app never sees (nor parses) a body larger than the limit.
4. **Headers** on every response: a Content-Security-Policy that allows only
   the page's own scripts, styles, images and requests and no framing
   (``frame-ancestors 'none'``, with ``X-Frame-Options: DENY`` for older
   browsers), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``,
   ``Cross-Origin-Resource-Policy: same-origin``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["RequestGuard", "LOOPBACK_NAMES", "SECURITY_HEADERS", "DEFAULT_MAX_BODY", "host_name"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_MAX_BODY = 32 * 1024 * 1024  #: bytes; about 60,000 stars x 35 columns of JSON

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_SAFE_METHODS = {"GET", "HEAD"}

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def host_name(value: str) -> str:
    """The host part of a ``Host`` header (or a ``--host`` value), lower case, without port or brackets.

    Examples
    --------
    >>> host_name("LocalHost:8765"), host_name("[::1]:8765"), host_name("::1"), host_name("127.0.0.1")
    ('localhost', '::1', '::1', '127.0.0.1')
    """
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else ""
    if v.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        v = v.split(":", 1)[0]
    return v[:-1] if v.endswith(".") else v  # "localhost." is "localhost"


def _is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware: Host allow-list, same-origin writes, body limit, security headers.

    Parameters
    ----------
    app : ASGI app
        The app to protect.
    allowed_hosts : iterable of str
        Names (besides the loopback ones) the ``Host`` header may carry.
    max_body : int
        Largest request body in bytes.
    """

    def __init__(self, app: Any, *, allowed_hosts: Iterable[str] = (), max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.allowed_hosts = {host_name(h) for h in allowed_hosts if h and host_name(h)}
        self.max_body = int(max_body)

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return bool(name) and (_is_loopback(name) or name in self.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the app has no websockets
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.host_allowed(host):
            shown = host[:80] if host else "(none)"
            await _refuse(send, 400, f"host {shown!r} is not served: open the page by a loopback address "
                                     "(http://127.0.0.1:PORT/) or a name given with --allow-host")
            return
        method = scope.get("method", "GET").upper()
        why = self._cross_site(method, scope.get("path", ""), host, headers)
        if why:
            await _refuse(send, 403, why)
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _refuse(send, 400, "Content-Length is not a number")
                return
            if int(length) > self.max_body:
                await _refuse(send, 413, self._too_large())
                return
        body = bytearray()
        while True:  # read and count the body before the app parses anything
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                del body[:]
                await _refuse(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, _with_headers(send))

    def _too_large(self) -> str:
        return (f"request body larger than {self.max_body / 2 ** 20:g} MB; export fewer stars or start "
                "psfkit view with a larger --max-body")

    @staticmethod
    def _cross_site(method: str, path: str, host: str, headers: dict[str, str]) -> str | None:
        """Why a request from another site is refused (None: it is not one)."""
        site = headers.get("sec-fetch-site", "").lower()
        own = "http://" + host.strip().lower()
        if method in _SAFE_METHODS:
            if path.startswith("/api/") and site in ("cross-site", "same-site"):
                return f"{path}: requests from another site are not served"
            return None
        if site in ("cross-site", "same-site"):
            return f"{method} {path}: requests from another site are refused"
        origin = headers.get("origin")
        if origin is not None:
            if origin.strip().lower() != own:
                return f"{method} {path}: origin {origin[:80]!r} is not this page's ({own}); refused"
            return None
        referer = headers.get("referer")
        if referer is not None:
            parts = urlsplit(referer.strip())
            if f"{parts.scheme}://{parts.netloc}".lower() != own:
                return f"{method} {path}: sent from another page ({parts.scheme}://{parts.netloc}); refused"
        return None


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": list(message.get("headers", [])) + extra}
        await send(message)

    return wrapped


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")] + list(SECURITY_HEADERS)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
