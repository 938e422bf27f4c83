"""envoy.filters.http.custom_response: a backend's response replaced by the gateway's own.

The matcher looks at each upstream response's status (``HttpResponseStatusCodeMatchInput``:
``502``; ``HttpResponseStatusCodeClassMatchInput``: ``5xx``), through single, or, and and
not predicates; the first that matches (or ``on_no_match``) names a
``LocalResponsePolicy``. That policy answers instead: its status (the backend's when it has
none), its body in its ``body_format`` (``%LOCAL_REPLY_BODY%``), its headers; the
backend's response is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...config import model as m
from ...config.datasource import read
from ...matchers import string_matcher
from ...stats import Store
from ..codec import Headers
from ..filter import register
from ..local_reply import Format, body_format, render_body
from ..router.header_parser import HeaderOps, header_ops

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

Test = Callable[[int], bool]


def _predicate(p: m.Predicate) -> Test:
    if p.single_predicate is not None:
        single = p.single_predicate
        matches = string_matcher(single.value_match)
        if isinstance(single.input.typed_config, m.StatusClassInput):
            return lambda status: matches(f"{status // 100}xx")
        return lambda status: matches(str(status))
    if p.not_matcher is not None:
        inner = _predicate(p.not_matcher)
        return lambda status: not inner(status)
    group = p.or_matcher or p.and_matcher
    assert group is not None  # (one of them: the model says so)
    tests = [_predicate(x) for x in group.predicate]
    if p.and_matcher is not None:
        return lambda status: all(t(status) for t in tests)
    return lambda status: any(t(status) for t in tests)


class _Policy:
    def __init__(self, cfg: m.LocalResponsePolicy) -> None:
        self.status = cfg.status_code
        self.body = read(cfg.body) if cfg.body is not None else b""
        self.format: tuple[Format, bytes] | None = \
            body_format(cfg.body_format) if cfg.body_format is not None else None
        self.headers: HeaderOps = header_ops(cfg.response_headers_to_add, [])

    def answer(self, cb: FilterCallbacks, status: int) -> None:
        status = self.status or status
        extra: Headers = []
        self.headers.apply(extra, cb.info.expand)
        body = self.body
        if self.format is not None:  # (its content_type is not used: Envoy 1.40 sends
            body = render_body(self.format[0], body, status, cb.info)  # text/plain, measured)
        cb.send_local_reply(status, body, "custom_response", extra=extra)


@register(m.CustomResponse)
class CustomResponseFilter:
    def __init__(self, cfg: m.CustomResponse, store: Store, hcm_prefix: str) -> None:
        matcher = cfg.custom_response_matcher
        self.rules = [(_predicate(fm.predicate), _Policy(fm.on_match.action.typed_config))
                      for fm in matcher.matcher_list.matchers]
        self.no_match = _Policy(matcher.on_no_match.action.typed_config) \
            if matcher.on_no_match is not None else None

    def _policy(self, status: int) -> _Policy | None:
        return next((p for test, p in self.rules if test(status)), self.no_match)

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        def override(status: int, headers: Headers) -> bool:
            policy = self._policy(status)
            if policy is None:
                return False
            policy.answer(cb, status)
            return True
        cb.add_response_override(override)
        return True
