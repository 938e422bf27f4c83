"""Envoy's path normalization: ``normalize_path``, ``merge_slashes`` and
``path_with_escaped_slashes_action``, so that the path the route matched is the path the
backend reads (``/a/../admin``, ``//admin`` and ``%2e%2e`` cannot slip past a prefix).

``canonical`` follows the Chromium URL canonicalizer Envoy embeds, byte for byte: dot segments
(also as ``%2e``, and ``..;params``) resolved, ``\\`` read as ``/``, unreserved characters
unescaped, characters a URL may not hold escaped, and a path holding an escaped NUL refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

_HEX = b"0123456789abcdefABCDEF"
_UNESCAPED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~")
"""Escapes of these are decoded (Chromium's UNESCAPE class; the dot has its own rules)."""
_ESCAPED = frozenset([*range(1, 0x21), *b'"#<>?^`{|}', *range(0x7F, 0x100)])
"""Bytes the canonical form writes as %XX (Chromium's ESCAPE class; '%' and '\\' have their
own rules)."""


def _decode(path: bytes, i: int) -> int | None:
    """The byte escaped at path[i] ('%' then two hex digits), or None."""
    if i + 3 > len(path) or path[i + 1] not in _HEX or path[i + 2] not in _HEX:
        return None
    return int(path[i + 1 : i + 3], 16)


def _dot(path: bytes, i: int) -> int:
    """The length of a dot at path[i]: 1 for '.', 3 for '%2e', 0 for none."""
    if path[i : i + 1] == b".":
        return 1
    if path[i : i + 2] == b"%2" and path[i + 2 : i + 3] in (b"e", b"E"):
        return 3
    return 0


def _after_dot(path: bytes, i: int) -> tuple[int, int]:
    """What follows a dot at the start of a segment: (0 not a directory | 1 current | 2 up,
    input bytes consumed after the first dot)."""
    end = len(path)
    if i == end:
        return 1, 0
    if path[i] in b"/\\":
        return 1, 1
    second = _dot(path, i)
    if second:
        j = i + second
        if j == end:
            return 2, second
        if path[j] in b"/\\":
            return 2, second + 1
    return 0, 0


def _with_params(path: bytes, i: int) -> tuple[int, int]:
    """Envoy also reads a literal ``.;x`` or ``..;x`` segment (path parameters, as Tomcat
    takes them) as ``.`` or ``..``, parameters dropped up to the next '/'; the same answer
    as _after_dot, for the bytes after a first literal dot."""
    two = path[i : i + 1] == b"."
    start = i + 1 if two else i
    if path[start : start + 1] != b";":
        return 0, 0
    slash = path.find(b"/", start)
    end = len(path) if slash < 0 else slash + 1
    return (2 if two else 1), end - i


def _back_up(out: bytearray) -> None:
    """Drops the last segment: the output ends with '/' and keeps its first one."""
    i = len(out) - 1
    if i == 0:
        return
    i -= 1
    while out[i] != 0x2F and i > 0:
        i -= 1
    del out[i + 1 :]


def _nested(path: bytes, nxt: int, bad: int, out: bytearray) -> None:
    """An unescaped byte may complete an earlier stray '%' into a valid escape (``%%30%30``
    → ``%00``); that '%' is then written as %25, so a second decoding cannot change it."""
    length = len(out)
    last = out[-1]
    append = bad == length - 2
    if append:
        if nxt == len(path) or path[nxt] >= 0x80:
            return
        out.append(path[nxt])
    if _decode(bytes(out), bad) is not None:
        if not append:
            out.append(out[bad + 1])
        out[bad + 1] = 0x32
        out[bad + 2] = 0x35
        out.append(last)
    elif append:
        del out[length:]


def canonical(path: bytes) -> bytes | None:
    """Chromium's CanonicalizePath on the part before '?', the query kept as it is; None
    when the path cannot be made canonical (Envoy answers 400)."""
    q = path.find(b"?")
    part, query = (path, b"") if q < 0 else (path[:q], path[q:])
    if not part:
        return b"/" + query
    out = bytearray() if part[0] in b"/\\" else bytearray(b"/")
    i = 0
    ok = True
    bad = -(1 << 30)  # where the last '%' that began no valid escape went in the output
    end = len(part)
    while i < end:
        c = part[i]
        dot = _dot(part, i)
        if dot:
            if out[-1] == 0x2F:
                kind, used = _after_dot(part, i + dot)
                if kind == 0 and dot == 1:
                    kind, used = _with_params(part, i + 1)
                if kind == 0:
                    out.append(0x2E)
                    i += dot
                elif kind == 1:
                    i += dot + used
                else:
                    _back_up(out)
                    i += dot + used
            else:
                out.append(0x2E)
                i += dot
            continue
        if c == 0x5C:
            out.append(0x2F)
        elif c == 0x25:
            value = _decode(part, i)
            if value is None:
                bad = len(out)
                out.append(0x25)
            else:
                if value in _UNESCAPED:
                    out.append(value)
                    if bad >= len(out) - 3:
                        _nested(part, i + 3, bad, out)
                else:
                    out += part[i : i + 3]
                    if value == 0:
                        ok = False
                i += 2
        elif c == 0:
            out += b"%00"
            ok = False
        elif c in _ESCAPED:
            out += b"%%%02X" % c
        else:
            out.append(c)
        i += 1
    return bytes(out) + query if ok else None


def merge_slashes(path: bytes) -> bytes:
    """Runs of '/' in the path (not the query) become one."""
    q = path.find(b"?")
    part, query = (path, b"") if q < 0 else (path[:q], path[q:])
    if b"//" not in part:
        return path
    merged = b"/".join(s for s in part.split(b"/") if s)
    lead = b"/" if part.startswith(b"/") else b""
    trail = b"/" if part.endswith(b"/") and merged else b""
    return lead + merged + trail + query


_SLASHES = ((b"%2F", b"/"), (b"%2f", b"/"), (b"%5C", b"\\"), (b"%5c", b"\\"))


def unescape_slashes(path: bytes) -> bytes:
    """%2F and %5C (either case) in the path become '/' and '\\'; the query is left."""
    q = path.find(b"?")
    part, query = (path, b"") if q < 0 else (path[:q], path[q:])
    for escaped, plain in _SLASHES:
        part = part.replace(escaped, plain)
    return part + query


class Outcome(enum.Enum):
    CONTINUE = "continue"
    REJECT = "reject"
    REDIRECT = "redirect"


@dataclass(frozen=True)
class PathPolicy:
    """One connection manager's path rules, applied in Envoy's order: escaped slashes,
    then RFC 3986 normalization, then merging slashes."""

    normalize: bool = False
    merge: bool = False
    escaped_slashes: str = "KEEP_UNCHANGED"

    @property
    def active(self) -> bool:
        return self.normalize or self.merge or self.escaped_slashes != "KEEP_UNCHANGED"

    def apply(self, path: bytes) -> tuple[Outcome, bytes]:
        outcome = Outcome.CONTINUE
        if self.escaped_slashes != "KEEP_UNCHANGED":
            unescaped = unescape_slashes(path)
            if unescaped != path:
                if self.escaped_slashes == "REJECT_REQUEST":
                    return Outcome.REJECT, path
                if self.escaped_slashes == "UNESCAPE_AND_REDIRECT":
                    outcome = Outcome.REDIRECT
                path = unescaped
        if self.normalize:
            normal = canonical(path)
            if normal is None:
                return Outcome.REJECT, path
            path = normal
        if self.merge:
            path = merge_slashes(path)
        return outcome, path
