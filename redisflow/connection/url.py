"""Redis URLs: parsed and checked up front, so a typo is a clear error, never another host.

Accepted forms (docs/security.md lists every query option)::

    redis://[[user]:password@]host[:port][/db][?options]      one server (TLS: rediss://)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]       a local socket
    redis+cluster://[...@]host:port[,host:port...][/]          seed nodes of a cluster
    redis+sentinel://[...@]host:port[,host:port...]/service[/db]   sentinels of a primary

Anything else (an unknown scheme or option, no host, a port or database that is not a
number, a password given twice) raises ``ConfigError`` naming what is wrong. ``redact``
hides every password, in any of its forms, for logs, pages and errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote

from ..errors import ConfigError

if TYPE_CHECKING:
    import ssl

Mode = Literal["single", "cluster", "sentinel"]
DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
SCHEMES: dict[str, tuple[Mode, bool]] = {  # scheme -> (mode, tls)
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
OPTIONS = frozenset(
    {
        "db",
        "username",
        "password",
        "client_name",
        "connect_timeout",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "sentinel_username",
        "sentinel_password",
    }
)
SECRETS = frozenset({"password", "sentinel_password"})
HIDDEN = "***"
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_HOST = re.compile(r"[A-Za-z0-9._-]+")  # a name or an IPv4 address
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?")  # inside brackets
_SECRET_OPTION = re.compile(r"([?&])([^=&?#]*)=")
_KNOWN_OPTION = re.compile("&(?:" + "|".join(sorted(OPTIONS)) + ")=", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***``, whatever its form (never raises).

    Read leniently, so that a URL the parser refuses is shown redacted too (any scheme case,
    spaces, a password holding ``@ / ? # : &``). Hidden: the user info, from ``://`` (or the
    start) to the *last* ``@``, but for the user name; the value of every ``password`` and
    ``sentinel_password`` option (any case, percent-encoded or not), up to the next option
    redisflow knows. An ``@`` in another option (``client_name``) hides the host too: more
    than needed, never less."""
    text = str(url)
    hidden = [False] * len(text)
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme is not None else 0
    at = text.rfind("@")
    if at >= start:
        user, colon, _ = text[start:at].partition(":")
        first = start + len(user) + 1 if colon and "@" not in user else start
        hidden[first:at] = [True] * (at - first)
    for secret in _SECRET_OPTION.finditer(text):
        if unquote(secret.group(2)).strip().lower() not in SECRETS:
            continue
        end = secret.end()
        following = _KNOWN_OPTION.search(text, end)
        stop = following.start() if following is not None else len(text)
        hidden[end:stop] = [True] * (stop - end)
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append(HIDDEN)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Address:
    """Where one server listens: ``host:port``, or a Unix socket ``path``."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS options of a ``rediss://`` URL (``ssl_*`` query options)."""

    cert_reqs: str = "required"
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An SSLContext with these options."""
        import ssl  # only TLS users pay for its import

        ctx = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        if self.cert_reqs == "none":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.check_hostname = self.check_hostname and self.cert_reqs == "required"
            required = self.cert_reqs == "required"
            ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
        return ctx


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Everything a connection to one server needs: address, credentials, TLS, database."""

    address: Address
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: Tls | None = None
    connect_timeout: float = 5.0

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A parsed URL: the deployment (one server, a cluster, or a primary behind sentinels),
    the addresses it names, and how to talk to them."""

    mode: Mode
    addresses: tuple[Address, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: Tls | None = None
    client_name: str | None = None
    connect_timeout: float = 5.0
    service: str | None = None  # the primary's name, for sentinel
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    display: str = ""  # the URL with its passwords hidden

    def endpoint(self, address: Address | None = None) -> Endpoint:
        """How to connect to ``address`` (default: the first one named) as a data node."""
        return Endpoint(
            address or self.addresses[0],
            self.username,
            self.password,
            self.db,
            self.tls,
            self.connect_timeout,
        )

    def sentinel_endpoint(self, address: Address) -> Endpoint:
        """How to connect to one of the sentinels (their own credentials, no database)."""
        return Endpoint(
            address, self.sentinel_username, self.sentinel_password, 0, self.tls,
            self.connect_timeout,
        )  # fmt: skip


def parse_url(url: str) -> ServerSpec:
    """Parse and check a Redis URL (see the module docstring); ConfigError if it is wrong.
    Surrounding whitespace (a stray space or newline in ``$REDISFLOW_URL``) is ignored."""
    if not isinstance(url, str):
        raise ConfigError(f"the Redis URL must be a string, not a {type(url).__name__}")
    url = url.strip()
    if not url:
        raise ConfigError("the Redis URL is empty (expected redis://HOST:PORT/DB)")
    display = redact(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"not a Redis URL: {display!r}{_guess(url)}; expected redis://HOST:PORT/DB"
        )
    mode, tls = _scheme(scheme, display)
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    _check_at(path, query, fragment, display)
    options = _query(query, display)
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _userinfo(userinfo if at else "", options, display)
    found = _tls(options, tls, display)
    _only_for_sentinels(options, mode, display)
    common = dict(
        username=username, password=password, tls=found, client_name=options.get("client_name"),
        connect_timeout=_timeout(options, display), display=display,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )  # fmt: skip
    if scheme == "unix":
        socket_path = "/" + path if slash else ""
        if hosts or not socket_path.strip("/"):
            raise ConfigError(
                f"a unix:// URL names a socket path: unix:///path/to/redis.sock ({display!r})"
            )
        db = _db(options.get("db", "0"), display)
        return ServerSpec("single", (Address(path=socket_path),), db=db, **common)  # type: ignore[arg-type]
    if not hosts:
        raise ConfigError(
            f"no host in the Redis URL {display!r}: expected {scheme}://HOST:PORT/..."
        )
    default = SENTINEL_PORT if mode == "sentinel" else DEFAULT_PORT
    addresses = tuple(_address(part, default, display) for part in hosts.split(","))
    if mode == "single" and len(addresses) > 1:
        raise ConfigError(
            f"several hosts in {display!r}: use redis+cluster:// or redis+sentinel:// for those"
        )
    service = None
    parts = [p for p in path.split("/") if p] if slash else []
    if mode == "sentinel":
        if not parts:
            raise ConfigError(
                f"name the primary: redis+sentinel://HOST:PORT/SERVICE/DB ({display!r})"
            )
        service, parts = parts[0], parts[1:]
    if len(parts) > 1:
        raise ConfigError(f"unexpected path {_shown(path, display)} in {display!r}: expected /DB")
    db_text = parts[0] if parts else options.get("db", "0")
    db = _db(db_text, display)
    if mode == "cluster" and db:
        raise ConfigError(f"a Redis Cluster has only database 0, not {db} ({display!r})")
    del fragment
    return ServerSpec(mode, addresses, db=db, service=service, **common)  # type: ignore[arg-type]


def _scheme(scheme: str, display: str) -> tuple[Mode, bool]:
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(
            f"unsupported URL scheme {_shown(scheme, display)} in {display!r}: use one of {known}"
        )
    return SCHEMES[scheme]


def _check_at(path: str, query: str, fragment: str, display: str) -> None:
    """Refuse an ``@`` after the host: a password holding ``/ ? #`` not percent-encoded
    (parsed as it is, the rest of the password would be taken for the host)."""
    if "@" in path or "@" in fragment or ("@" in query and not _known_query(query)):
        raise ConfigError(
            f"an '@' after a '/', '?' or '#' in {display!r}: a password holding one of those"
            " must write it percent-encoded (%2F, %3F, %23)"
        )


def _guess(url: str) -> str:
    """What a string without ``://`` probably meant: ``localhost:6380`` ->
    ``redis://localhost:6380``, ``redis:/host`` -> ``redis://host`` (redacted)."""
    scheme, colon, rest = url.partition(":")
    if colon and scheme.lower() in SCHEMES:
        guess = f"{scheme.lower()}://{rest.lstrip('/')}"
    elif " " not in url:
        guess = f"redis://{url}"
    else:
        return ""
    return f" (did you mean {redact(guess)}?)"


def _shown(piece: str, display: str) -> str:
    """``piece`` of a URL quoted for an error, unless the redacted URL hides it (it may be
    part of a password whose ``/``, ``?`` or ``#`` was not percent-encoded)."""
    if piece and piece in display:
        return repr(piece)
    return "(hidden with the password: percent-encode its '/', '?', '#' or '&')"


def _known_query(query: str) -> bool:
    """Whether ``query`` is only ``name=value`` options redisflow knows."""
    return all(part.partition("=")[0] in OPTIONS and "=" in part for part in query.split("&"))


def _query(query: str, display: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"malformed query string in {display!r}") from None
    unknown = sorted(set(parsed) - OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown URL option {_shown(unknown[0], display)} in {display!r}; known:"
            f" {', '.join(sorted(OPTIONS))}"
        )
    twice = [name for name, values in parsed.items() if len(values) > 1]
    if twice:
        raise ConfigError(f"URL option {_shown(twice[0], display)} given twice in {display!r}")
    return {name: values[0] for name, values in parsed.items()}


def _userinfo(
    userinfo: str, options: dict[str, str], display: str
) -> tuple[str | None, str | None]:
    user, sep, secret = userinfo.partition(":")
    if userinfo and not sep:
        raise ConfigError(
            f"credentials without ':' in {display!r}: write :PASSWORD@ or USER:PASSWORD@"
        )
    username = unquote(user) or options.get("username") or None
    password = unquote(secret) if sep else None
    if password is not None and "password" in options:
        raise ConfigError(f"the password is given twice in {display!r}")
    if password is None:
        password = options.get("password")
    return username, password or None


def _address(part: str, default: int, display: str) -> Address:
    if not part:
        raise ConfigError(f"an empty host in {display!r}")
    if part.startswith("["):  # [ipv6]:port
        host, _, port_text = part[1:].partition("]")
        port_text = port_text.removeprefix(":")
        pattern = _IPV6
    else:
        host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
        pattern = _HOST
    if not host:
        raise ConfigError(f"no host before the port in {display!r}")
    if not pattern.fullmatch(host):
        raise ConfigError(f"bad host {_shown(host, display)} in {display!r}")
    if not port_text:
        return Address(host, default)
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port {_shown(port_text, display)} in {display!r}: expected 1-65535")
    return Address(host, int(port_text))


def _db(text: str, display: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(
            f"the database must be a number, not {_shown(text, display)} ({display!r})"
        )
    return int(text)


def _timeout(options: dict[str, str], display: str) -> float:
    text = options.get("connect_timeout", "5")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"connect_timeout must be seconds > 0, not {_shown(text, display)} ({display!r})"
        )
    return value


def _only_for_sentinels(options: dict[str, str], mode: Mode, display: str) -> None:
    if mode != "sentinel" and (given := sorted(n for n in options if n.startswith("sentinel_"))):
        raise ConfigError(f"{given[0]} needs a redis+sentinel:// URL ({display!r})")


def _tls(options: dict[str, str], tls: bool, display: str) -> Tls | None:
    given = {name for name in options if name.startswith("ssl_")}
    if not tls:
        if given:
            raise ConfigError(f"{sorted(given)[0]} needs a rediss:// URL ({display!r})")
        return None
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("none", "optional", "required"):
        raise ConfigError(f"ssl_cert_reqs must be none, optional or required ({display!r})")
    check = options.get("ssl_check_hostname", "true").lower()
    if check not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"ssl_check_hostname must be true or false ({display!r})")
    return Tls(
        reqs,
        options.get("ssl_ca_certs"),
        options.get("ssl_certfile"),
        options.get("ssl_keyfile"),
        check in ("true", "1", "yes"),
    )
