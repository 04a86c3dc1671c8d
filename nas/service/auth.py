"""Who may change things: a bearer token on every request that is not a read.

``nas serve`` binds 127.0.0.1 unless told otherwise; binding any other address needs a
token (``--token`` or ``$NAS_TOKEN``). With a token set, every POST/PUT/PATCH/DELETE must
carry ``Authorization: Bearer <token>`` or ``X-NAS-Token: <token>``, else 401. This is a
middleware rather than a per-route dependency so that a router added later (export, ...)
is covered without remembering to opt in. The one exception is an HTML form (`FORM_PATHS`):
a browser cannot add the header to a form post, so that route checks a ``token`` field itself.

Two browser attacks are closed as well, token or not: a cross-site form POST (the
``Origin`` of a state-changing request must be this server) and DNS rebinding against a
loopback server (``allowed_hosts`` limits the ``Host`` header).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from nas.errors import ConfigError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_ENV = "NAS_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# HTML forms a browser posts without an Authorization header: their routes check the token
# themselves (a form field, or the same headers) with `token_matches`. Same-origin still applies.
FORM_PATHS = frozenset({"/new"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(option: str | None) -> str | None:
    """``--token`` wins over ``$NAS_TOKEN``; empty means none."""
    token = option if option is not None else os.environ.get(TOKEN_ENV)
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (ConfigError)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to bind {host}: anyone who can reach it could start and stop searches. "
            f"Set a token with --token or ${TOKEN_ENV} (clients send 'Authorization: Bearer "
            "<token>'), or bind 127.0.0.1", field="host", value=host)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison, so response times do not leak how much of a guess was right."""
    return secrets.compare_digest(given.encode(), token.encode())


def presented_token(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-nas-token")


class GuardMiddleware:
    """Token on writes, same-origin writes, and (optionally) an allow-list of Host headers."""

    def __init__(self, app: ASGIApp, token: str | None = None,
                 allowed_hosts: Sequence[str] | None = None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _host_name(_header(scope, b"host") or "")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _reply(send, 400, f"unexpected Host header {host!r}: this server answers "
                                    f"{', '.join(sorted(self.allowed_hosts))}")
            return
        if scope["method"] not in SAFE_METHODS:
            if self.token is not None and scope["path"] not in FORM_PATHS:
                given = presented_token(scope)
                if given is None or not token_matches(given, self.token):
                    await _reply(send, 401, "this request changes something and needs the "
                                            "server's token: send 'Authorization: Bearer <token>'"
                                            if given is None else "invalid token",
                                 [(b"www-authenticate", b"Bearer")])
                    return
            origin = _header(scope, b"origin")
            if origin and origin != "null" and urlsplit(origin).netloc.lower() != \
                    (_header(scope, b"host") or "").lower():
                await _reply(send, 403, f"cross-origin request from {origin} refused")
                return
        await self.app(scope, receive, send)


def _host_name(host_header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``[::1]``."""
    host = host_header.lower()
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _reply(send: Send, status: int, detail: str,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
