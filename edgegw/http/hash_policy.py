"""A route's hash_policy: the request's key for RING_HASH and MAGLEV clusters (sticky sessions).

Envoy's rules: each policy that finds its input yields xxHash64 of it (several values of a
header are sorted first); results are combined by rotating the running hash one bit left and
xor-ing; a ``terminal`` policy that produced a hash ends the walk. No input, no hash: the
balancer then picks at random.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

import xxhash

from ..config import model as m

Headers = list[tuple[bytes, bytes]]
HashFn = Callable[[Headers, bytes, str], "int | None"]
"""(request headers, path with query, client IP) → the hash, or None."""

_MASK = (1 << 64) - 1


def _header(name: bytes) -> HashFn:
    def run(headers: Headers, path: bytes, ip: str) -> int | None:
        values = sorted(v for k, v in headers if k == name)
        if not values:
            return None
        h = 0
        for v in values:
            h = xxhash.xxh64_intdigest(v, h)
        return h
    return run


def _cookie(name: str) -> HashFn:
    def run(headers: Headers, path: bytes, ip: str) -> int | None:
        for k, v in headers:
            if k != b"cookie":
                continue
            for part in v.decode("latin-1").split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return xxhash.xxh64_intdigest(value.encode("latin-1"))
        return None
    return run


def _source_ip(headers: Headers, path: bytes, ip: str) -> int | None:
    return xxhash.xxh64_intdigest(ip.encode()) if ip else None


def _query(name: str) -> HashFn:
    def run(headers: Headers, path: bytes, ip: str) -> int | None:
        _, _, query = path.partition(b"?")
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == name:
                return xxhash.xxh64_intdigest(value.encode("latin-1"))
        return None
    return run


def _method(p: m.HashPolicy) -> HashFn | None:
    if p.header is not None:
        return _header(p.header.header_name.lower().encode("latin-1"))
    if p.cookie is not None:
        return _cookie(p.cookie.name)
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

    def run(headers: Headers, path: bytes, ip: str) -> int | None:
        h: int | None = None
        for fn, terminal in methods:
            new = fn(headers, path, ip)
            if new is not None:
                old = ((h << 1) | (h >> 63)) & _MASK if h is not None else 0
                h = old ^ new
            if terminal and h is not None:
                break
        return h

    return run
