"""A route's hash_policy: the request's key for RING_HASH and MAGLEV clusters (sticky sessions).

Envoy's rules: each policy that finds its input yields xxHash64 of it (several values of a
header are sorted first); results are combined by rotating the running hash one bit left and
xor-ing; a ``terminal`` policy that produced a hash ends the walk. No input, no hash: the
balancer then picks at random. A cookie policy with a ``ttl`` makes the cookie when the client
has none (its value from the connection's two addresses, as Envoy makes it) and sends it with
the response, so that a browser sticks to one backend from its first request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

import xxhash

from ...config import model as m
from ..codec import Headers


class _Peer(Protocol):
    remote_ip: str
    remote_port: int
    local_address: str


class _Client(Protocol):
    remote_ip: str
    """The client's address for this request (original IP detection may have set it)."""


class Request(Protocol):
    """What a hash policy reads of a request (the stream provides it)."""

    headers: Headers
    path: bytes
    @property
    def info(self) -> _Client:
        """The request's record (``StreamInfo``)."""

    @property
    def conn(self) -> _Peer: ...
    def add_response_hook(self, hook: Callable[[Headers], None]) -> None: ...


HashFn = Callable[[Request], "int | None"]
"""The request (its headers, path, connection) → the hash, or None."""

_MASK = (1 << 64) - 1


def _header(name: bytes) -> HashFn:
    def run(s: Request) -> int | None:
        values = sorted(v for k, v in s.headers if k == name)
        if not values:
            return None
        h = 0
        for v in values:
            h = xxhash.xxh64_intdigest(v, h)
        return h
    return run


def cookie_value(headers: Headers, name: str) -> str | None:
    """A cookie's value from the request, unquoted, as Envoy parses it."""
    for k, v in headers:
        if k != b"cookie":
            continue
        for part in v.decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


def _cookie(c: m.HashCookie) -> HashFn:
    def run(s: Request) -> int | None:
        value = cookie_value(s.headers, c.name)
        if value is None and c.ttl is not None:
            value = _new_cookie(s, c)
        return xxhash.xxh64_intdigest(value.encode("latin-1")) if value else None
    return run


def _new_cookie(s: Request, c: m.HashCookie) -> str:
    """Envoy's generated cookie: hex xxHash64 of the client's and the listener's addresses,
    sent back as ``name="value"; Max-Age=ttl; Path=path; HttpOnly``."""
    conn = s.conn
    remote = m.address_string(conn.remote_ip, conn.remote_port)
    value = format(xxhash.xxh64_intdigest((remote + conn.local_address).encode()), "016x")
    parts = [f'{c.name}="{value}"']
    if c.ttl:
        parts.append(f"Max-Age={int(c.ttl)}")
    if c.path:
        parts.append(f"Path={c.path}")
    parts.append("HttpOnly")
    header = (b"set-cookie", "; ".join(parts).encode("latin-1"))
    s.add_response_hook(lambda headers: headers.append(header))
    return value


def _source_ip(s: Request) -> int | None:
    ip = s.info.remote_ip
    return xxhash.xxh64_intdigest(ip.encode()) if ip else None


def _query(name: str) -> HashFn:
    def run(s: Request) -> int | None:
        _, _, query = s.path.partition(b"?")
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == name:
                return xxhash.xxh64_intdigest(value.encode("latin-1"))
        return None
    return run


def _method(p: m.HashPolicy) -> HashFn | None:
    if p.header is not None:
        return _header(p.header.header_name.lower().encode("latin-1"))
    if p.cookie is not None:
        return _cookie(p.cookie)
    if p.query_parameter is not None:
        return _query(p.query_parameter.name)
    if p.connection_properties is not None and p.connection_properties.source_ip:
        return _source_ip
    return None


def compile_hash_policy(policies: list[m.HashPolicy]) -> HashFn | None:
    """One function computing the route's hash, or None when the route has no hash_policy."""
    methods = [(fn, p.terminal) for p in policies if (fn := _method(p)) is not None]
    if not methods:
        return None

    def run(s: Request) -> int | None:
        h: int | None = None
        for fn, terminal in methods:
            new = fn(s)
            if new is not None:
                old = ((h << 1) | (h >> 63)) & _MASK if h is not None else 0
                h = old ^ new
            if terminal and h is not None:
                break
        return h

    return run
