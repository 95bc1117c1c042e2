"""Who may see the dashboard and act through it.

- **Auth** (``Auth``): a token, or ``user:password``, checked on every request (HTTP Basic,
  which every browser asks for by itself; a token also as ``Authorization: Bearer``).
  Without one, only clients on this machine (loopback addresses) are served: behind a
  proxy that passes the client's address on, a remote visitor is refused too.
- **CSRF** (``Csrf``): every action is a POST that carries a token in its form equal to the
  one in a ``SameSite=Strict``, ``HttpOnly`` cookie and signed by a key of this dashboard
  (so a cookie planted by a sibling site cannot be forged); a POST from another origin
  (``Origin``, ``Sec-Fetch-Site``) is refused before that.
- **Headers** on every response: a Content-Security-Policy that allows only the
  dashboard's own script and style (no inline script: an injected ``<script>`` would not
  run even if escaping failed), no framing, no MIME sniffing, no caching of pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "redisflow_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


@dataclass(frozen=True, slots=True)
class Auth:
    """A token (any user name, the token as the password, or a Bearer token) or a user
    and password."""

    user: str | None
    secret: str

    @classmethod
    def parse(cls, text: str) -> Auth:
        """``TOKEN`` or ``USER:PASSWORD``; ConfigError when empty."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("auth must be a token or 'user:password', got an empty value")
        user, colon, password = text.partition(":")
        if not colon:
            return cls(None, text)
        if not user or not password:
            raise ConfigError("auth 'user:password' needs both a user name and a password")
        return cls(user, password)

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.user is None:
            return _same(value, self.secret)
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        user_ok = self.user is None or _same(user, self.user)
        return _same(password, self.secret) & user_ok


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_local(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Csrf:
    """Signed double-submit tokens: ``nonce.signature``, the signature an HMAC of the nonce
    under this dashboard's key (``secret``, random unless given: give one to every process
    of a dashboard served by several)."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        self.key = key or secrets.token_bytes(32)

    def new(self) -> str:
        """A fresh token."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was made by this dashboard."""
        if not token or token.count(".") != 1:
            return False
        nonce, signature = token.split(".")
        return hmac.compare_digest(signature, self._sign(nonce))

    def matches(self, cookie: str | None, submitted: str | None) -> bool:
        """Whether a POST's form token is the cookie's, and a valid one."""
        if not cookie or not submitted or not self.valid(cookie):
            return False
        return hmac.compare_digest(cookie.encode(), submitted.encode())

    def _sign(self, nonce: str) -> str:
        return hmac.new(self.key, nonce.encode(), hashlib.sha256).hexdigest()[:32]


def same_origin(scope: Scope) -> bool:
    """Whether a request comes from the dashboard's own pages: ``Sec-Fetch-Site`` (when the
    browser sends it) is same-origin, and ``Origin`` (when sent) names this host."""
    headers: dict[str, str] = {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
    }
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


class Guard:
    """The ASGI middleware in front of the dashboard: auth (or loopback only), same-origin
    POSTs, read-only, and the security headers."""

    def __init__(
        self, app: ASGIApp, auth: Auth | Callable[[Scope], bool] | None, read_only: bool
    ) -> None:
        self.app, self.auth, self.read_only = app, auth, read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refuse(scope)
        if refusal is not None:
            status, text, extra = refusal
            await _plain(send, status, text, extra)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)

    def refuse(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """Why a request is refused (status, text, headers), or None."""
        if self.auth is None:
            client = scope.get("client")
            if not is_local(client[0] if client else None):
                return (
                    403,
                    (
                        "This dashboard has no auth, so it serves this machine only: start it"
                        " with --auth (or dashboard(..., auth=...)) to serve other machines."
                    ),
                    [],
                )
        elif isinstance(self.auth, Auth):
            header = next((v.decode("latin-1") for k, v in scope["headers"]
                           if k.lower() == b"authorization"), None)  # fmt: skip
            if not self.auth.allows(header):
                challenge = (b"www-authenticate", b'Basic realm="redisflow", charset="UTF-8"')
                return 401, "Authentication required.", [challenge]
        elif not self.auth(scope):
            return 403, "Not allowed.", []
        if scope["method"] not in ("GET", "HEAD"):
            if self.read_only:
                return 403, "This dashboard is read-only.", []
            if not same_origin(scope):
                return 403, "Cross-origin request refused.", []
        return None


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        *HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
