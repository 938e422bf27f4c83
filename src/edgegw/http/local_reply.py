"""The HCM's local_reply_config: the replies edgegw makes itself, rewritten as Envoy does.

The first mapper whose filter matches the reply (its status code, the request's headers, the
response flags) may change its status, body and headers. Then ``body_format`` (the mapper's
``body_format_override`` first) formats the body, with ``%LOCAL_REPLY_BODY%`` for the body
and every access log operator; its content type is ``text/plain`` for a text format and
``application/json`` for a JSON one, unless the format names another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..accesslog.format import compile_template
from ..config import model as m
from ..config.datasource import read
from ..matchers import header_matcher
from .codec import Headers
from .router.header_parser import HeaderOps, header_ops
from .stream_info import StreamInfo

Match = Callable[[int, StreamInfo, Headers], bool]
Format = Callable[[StreamInfo], str]

_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "EQ": lambda a, b: a == b, "GE": lambda a, b: a >= b, "LE": lambda a, b: a <= b}


def _matcher(f: m.AccessLogFilter) -> Match:
    if f.status_code_filter is not None:
        cmp = f.status_code_filter.comparison
        test, value = _COMPARE[cmp.op], cmp.value.default_value
        return lambda code, info, headers: test(code, value)
    if f.response_flag_filter is not None:
        wanted = set(f.response_flag_filter.flags)
        return lambda code, info, headers: any(
            not wanted or fl.value in wanted for fl in info.flags)
    if f.header_filter is not None:
        has = header_matcher(f.header_filter.header)
        return lambda code, info, headers: has(headers)
    subs = [_matcher(x) for x in (f.and_filter or f.or_filter).filters]  # type: ignore[union-attr]
    if f.and_filter is not None:
        return lambda code, info, headers: all(s(code, info, headers) for s in subs)
    return lambda code, info, headers: any(s(code, info, headers) for s in subs)


def body_format(fmt: m.SubstitutionFormatString) -> tuple[Format, bytes]:
    """A body format's formatter and content type (Envoy's: text/plain, or JSON's)."""
    kind = fmt.content_type or ("application/json" if fmt.json_format is not None
                                else "text/plain")
    return compile_template(fmt), kind.encode("latin-1")


def render_body(render: Format, body: bytes, status: int, info: StreamInfo) -> bytes:
    """A reply's body through a body format (``%LOCAL_REPLY_BODY%``, ``%RESPONSE_CODE%``)."""
    info.local_reply_body = body.decode("utf-8", "replace")
    info.code = status
    return render(info).encode("utf-8")


@dataclass(frozen=True)
class Mapper:
    match: Match
    status: int | None
    body: bytes | None
    headers: HeaderOps
    body_format: tuple[Format, bytes] | None


class LocalReply:
    def __init__(self, cfg: m.LocalReplyConfig) -> None:
        self.mappers = [Mapper(_matcher(mp.filter), mp.status_code,
                               read(mp.body) if mp.body is not None else None,
                               header_ops(mp.headers_to_add, []),
                               body_format(mp.body_format_override)
                               if mp.body_format_override is not None else None)
                        for mp in cfg.mappers]
        self.body_format = body_format(cfg.body_format) if cfg.body_format is not None else None

    def rewrite(self, status: int, body: bytes, info: StreamInfo, request: Headers,
                headers: Headers) -> tuple[int, bytes, bytes | None]:
        """The reply's status, body and content type (None: edgegw's own) after the
        mappers and the format; ``headers`` gets the mapper's headers."""
        fmt = self.body_format
        for mp in self.mappers:
            if mp.match(status, info, request):
                status = mp.status or status
                body = mp.body if mp.body is not None else body
                mp.headers.apply(headers, info.expand)
                fmt = mp.body_format or fmt
                break
        if fmt is None:
            return status, body, None
        render, kind = fmt
        return status, render_body(render, body, status, info), kind
