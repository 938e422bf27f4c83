"""Envoy's HeaderParser: request_headers_to_add/remove (and the response ones) compiled once,
with Envoy's append actions. The route table applies them at every level of a route, local
rate limiting to its replies, health checks to their request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...config import model as m
from ..codec import Headers


@dataclass(frozen=True)
class HeaderOps:
    """Compiled request_headers_to_add/remove (or the response ones) of one level."""

    remove: frozenset[bytes] = frozenset()
    add: tuple[tuple[bytes, str, bytes | None, str, bool], ...] = ()
    """(name, value, the value encoded when it has no %FIELD% to expand, action, keep empty)."""

    def apply(self, headers: Headers, expand: Callable[[str], str] | None = None) -> None:
        if self.remove:
            headers[:] = [h for h in headers if h[0] not in self.remove]
        for name, value, fixed, action, keep_empty in self.add:
            if fixed is not None:
                raw = fixed
            else:
                raw = (expand(value) if expand else value).encode("latin-1")
            if not raw and not keep_empty:
                continue
            if action == "APPEND_IF_EXISTS_OR_ADD":
                headers.append((name, raw))
            elif action == "ADD_IF_ABSENT":
                if not any(k == name for k, _ in headers):
                    headers.append((name, raw))
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD":
                headers[:] = [h for h in headers if h[0] != name]
                headers.append((name, raw))
            elif any(k == name for k, _ in headers):  # OVERWRITE_IF_EXISTS
                headers[:] = [h for h in headers if h[0] != name]
                headers.append((name, raw))

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)


def header_ops(adds: list[m.HeaderValueOption], removes: list[str]) -> HeaderOps:
    out = []
    for o in adds:
        action = o.append_action
        if o.append is not None:
            action = "APPEND_IF_EXISTS_OR_ADD" if o.append else "OVERWRITE_IF_EXISTS_OR_ADD"
        value = o.header.value
        out.append((o.header.key.lower().encode("latin-1"), value,
                    None if "%" in value else value.encode("latin-1"), action,
                    o.keep_empty_value))
    return HeaderOps(frozenset(r.lower().encode("latin-1") for r in removes), tuple(out))
