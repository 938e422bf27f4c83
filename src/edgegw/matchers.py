"""Envoy's matchers, compiled once into small closures: string matchers (routes, TLS SANs) and
header matchers (routes, retries, faults), with the header lookups they use.

A neutral module, so that the TLS side and the HTTP side can share them without importing
each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .config import model as m
from .http.codec import Headers


def first_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name``: the cheap lookup for headers that occur once."""
    for k, v in headers:
        if k == name:
            return v
    return None


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The value of ``name``; repeated fields are joined with ',' as Envoy joins them."""
    found = [v for k, v in headers if k == name]
    if not found:
        return None
    return found[0] if len(found) == 1 else b",".join(found)




def string_matcher(sm: m.StringMatcher) -> Callable[[str], bool]:
    fold = sm.ignore_case
    if sm.exact is not None:
        want = sm.exact.lower() if fold else sm.exact
        return (lambda v: v.lower() == want) if fold else (lambda v: v == want)
    if sm.prefix is not None:
        want = sm.prefix.lower() if fold else sm.prefix
        return (lambda v: v.lower().startswith(want)) if fold else (lambda v: v.startswith(want))
    if sm.suffix is not None:
        want = sm.suffix.lower() if fold else sm.suffix
        return (lambda v: v.lower().endswith(want)) if fold else (lambda v: v.endswith(want))
    if sm.contains is not None:
        want = sm.contains.lower() if fold else sm.contains
        return (lambda v: want in v.lower()) if fold else (lambda v: want in v)
    assert sm.safe_regex is not None
    rx = re.compile(sm.safe_regex.regex)
    return lambda v: rx.fullmatch(v) is not None


def header_matcher(hm: m.HeaderMatcher) -> Callable[[Headers], bool]:
    name = hm.name.lower().encode("latin-1")
    check: Callable[[str], bool] | None
    if hm.present_match is not None:
        want_present = hm.present_match
        check = None
    elif hm.string_match is not None:
        check = string_matcher(hm.string_match)
    elif hm.exact_match is not None:
        check = string_matcher(m.StringMatcher(exact=hm.exact_match))
    elif hm.prefix_match is not None:
        check = string_matcher(m.StringMatcher(prefix=hm.prefix_match))
    elif hm.suffix_match is not None:
        check = string_matcher(m.StringMatcher(suffix=hm.suffix_match))
    elif hm.contains_match is not None:
        check = string_matcher(m.StringMatcher(contains=hm.contains_match))
    elif hm.safe_regex_match is not None:
        check = string_matcher(m.StringMatcher(safe_regex=hm.safe_regex_match))
    else:
        want_present, check = True, None
    invert = hm.invert_match

    def match(headers: Headers) -> bool:
        value = get_header(headers, name)
        if check is None:
            ok = (value is not None) == want_present
        else:
            ok = value is not None and check(value.decode("latin-1"))
        return ok != invert

    return match
