"""Which URLs a device fetches from or uploads to: under its trusted bases, never link-local.

A URL arrives in a message, and whoever can publish on a device's downlink chooses it. A device
configured with trusted bases (`https://fw.example.com/files/`) fetches only URLs under one of
them; link-local addresses (169.254.0.0/16, fe80::/10, also written as IPv4-mapped IPv6 or in
the shorthand forms `inet_aton` accepts, such as `2852039166`) are refused whatever the bases
say, because that is where cloud metadata services answer with credentials.

The comparison is made on the parts the HTTP client will use (scheme, host, effective port, path
prefix at a segment boundary), parsed with the same `urlsplit` the client connects with, and
a URL whose path could mean something else to a server (dot segments, encoded slashes,
backslashes) is refused rather than normalized. `url_problem` is pure; `UrlPolicy` adds a DNS
look-up for host names, so a name that resolves to a link-local address is refused too (the
client resolves again when it connects: a resolver that answers differently the second time is
not covered).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import unquote, urlsplit

import attrs

from .transfer import TransferCode, TransferError

DEFAULT_PORTS = {"http": 80, "https": 443}
LINK_LOCAL_V4 = ipaddress.IPv4Network("169.254.0.0/16")
LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix: `64:ff9b::a9fe:a9fe` reaches 169.254.169.254 through a gateway."""
COMPATIBLE = ipaddress.IPv6Network("::/96")
"""Deprecated IPv4-compatible addresses (`::169.254.1.1`), still routed by some stacks."""

_DECIMAL = re.compile(r"[0-9]+")

Resolver = Callable[[str, int], Iterable[str]]
"""`resolve(host, port)`: the addresses a host name stands for (empty when it does not resolve)."""


class UrlRefusedError(TransferError):
    """The URL is not one this device may use; nothing was fetched. Code -2 ("the file cannot be
    had from there"): retrying the same URL can never succeed, unlike the -1 family."""

    def __init__(self, message: str) -> None:
        super().__init__(TransferCode.NOT_FOUND, message)


@attrs.frozen
class UrlBase:
    """One trusted base, as compared: lowercase scheme and host, effective port, path prefix."""

    scheme: str
    host: str
    port: int
    path: str
    """Ends with "/": a URL is under the base when its path starts with it (or equals it
    without the slash)."""

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        return path.startswith(self.path) or path == self.path.rstrip("/")

    def __str__(self) -> str:
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}{self.path}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_base(text: str) -> UrlBase:
    """A trusted base from its URL; ValueError saying what to write instead."""
    parts, problem = _split(text)
    if parts is None:
        raise ValueError(f"trusted URL base {text[:80]!r} is refused: {problem}")
    scheme, host, port, path = parts
    if "?" in text or "#" in text:
        raise ValueError(
            f"trusted URL base {text[:80]!r} has a query or fragment; give scheme, host, "
            "port and path only, e.g. https://fw.example.com/files/"
        )
    address = ip_literal(host)
    if address is not None and is_link_local(address):
        raise ValueError(f"trusted URL base {text[:80]!r} is link-local, which is never trusted")
    return UrlBase(scheme, host, port, path if path.endswith("/") else path + "/")


def _split(url: str) -> tuple[tuple[str, str, int, str] | None, str]:
    """(scheme, host, effective port, path) as the HTTP client will use them, or why not."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return None, "it contains whitespace or control characters"
    if "\\" in url:
        return None, "it contains a backslash, which parsers disagree about"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return None, f"it cannot be parsed ({exc})"
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return None, "only http and https URLs are fetched"
    if "@" in parts.netloc:
        return None, "it carries user information before the host"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None, "it has no host"
    if "%" in host:
        host = host.partition("%")[0]  # an IPv6 zone id (`fe80::1%25eth0`): the address counts
    address = ip_literal(host)
    if address is not None:
        host = str(address)  # one spelling per address, so `[::1]` and `[0::1]` compare equal
    path = parts.path or "/"
    problem = _path_problem(path)
    if problem is not None:
        return None, problem
    return (scheme, host, DEFAULT_PORTS[scheme] if port is None else port, path), ""


def _path_problem(path: str) -> str | None:
    """Why a server might read the path as another one: dot segments, also percent-encoded
    (once or twice), an encoded slash or backslash, or a NUL."""
    raw = path.split("/")
    for text in (path, unquote(path), unquote(unquote(path))):
        segments = text.split("/")
        if len(segments) != len(raw):
            return "its path holds an encoded '/'"
        if any(s in (".", "..") for s in segments):
            return "its path holds a '.' or '..' segment"
        if "\\" in text or "\x00" in text:
            return "its path holds an encoded backslash or NUL"
    return None


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host stands for when it is an IP literal, in any form the system's
    resolver accepts for IPv4 (`169.254.169.254`, `2852039166`, `0xa9.0376.43518`), else None."""
    try:
        return ipaddress.IPv6Address(host)
    except ValueError:
        pass
    return _inet_aton(host)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The BSD `inet_aton` grammar (what getaddrinfo accepts as a numeric IPv4 host): one to
    four parts in decimal, octal (leading 0) or hex (0x), the last filling the remaining bytes."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        low = part.lower()
        try:
            if low.startswith("0x"):
                values.append(int(low[2:] or "0", 16))
            elif low.startswith("0") and len(low) > 1:
                values.append(int(low[1:], 8))
            else:
                values.append(int(low, 10) if _DECIMAL.fullmatch(low) else -1)
        except ValueError:
            return None
    if any(v < 0 for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def is_link_local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local, directly or through an IPv6 form that carries an IPv4 address."""
    if isinstance(address, ipaddress.IPv4Address):
        return address in LINK_LOCAL_V4
    if address in LINK_LOCAL_V6:
        return True
    embedded = [address.ipv4_mapped, address.sixtofour]
    if address in NAT64 or (address in COMPATIBLE and int(address) > 1):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return any(v is not None and v in LINK_LOCAL_V4 for v in embedded)


def url_problem(url: str, bases: Sequence[UrlBase] = ()) -> str | None:
    """Why this device must not use `url`, or None. Pure: host names are not resolved here."""
    parts, problem = _split(url)
    if parts is None:
        return problem
    scheme, host, port, path = parts
    address = ip_literal(host)
    if address is not None and is_link_local(address):
        return f"its host {address} is link-local"
    if bases and not any(base.admits(scheme, host, port, path) for base in bases):
        return f"it is under none of the trusted bases ({', '.join(map(str, bases))})"
    return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []  # the client fails to connect on its own, with its own error
    return [str(info[4][0]) for info in found]


class UrlPolicy:
    """The device's rule for every URL it is handed (downloads, their redirects, uploads)."""

    def __init__(self, bases: Iterable[str] = (), *, resolve: Resolver = _resolve) -> None:
        """`bases`: trusted base URLs (none: any host but a link-local one). ValueError for a
        base that is not a plain http(s) URL."""
        self.bases = tuple(parse_base(b) for b in bases)
        self._resolve = resolve

    def problem(self, url: str) -> str | None:
        """Why the device must not use `url` (see `url_problem`), also when its host name
        resolves to a link-local address; None when it may."""
        problem = url_problem(url, self.bases)
        if problem is not None:
            return problem
        parts, _ = _split(url)
        assert parts is not None  # url_problem found none of _split's problems
        _, host, port, _ = parts
        if ip_literal(host) is not None:
            return None
        for text in self._resolve(host, port):
            address = ip_literal(text.partition("%")[0])
            if address is not None and is_link_local(address):
                return f"its host {host} resolves to the link-local address {address}"
        return None

    def check(self, url: str) -> None:
        """Raise UrlRefusedError (code -2) unless the device may use `url`."""
        problem = self.problem(url)
        if problem is not None:
            host = urlsplit(url).hostname or "?"
            raise UrlRefusedError(f"refused the URL on host {host}: {problem}")
