"""Path normalization at the byte level: Envoy's own cases for its canonicalizer, slash
merging and escaped slashes (the end-to-end comparison with Envoy is in test_edge_safety)."""

from __future__ import annotations

import pytest

from edgegw.http.path import Outcome, PathPolicy, canonical, merge_slashes, unescape_slashes


@pytest.mark.parametrize(("raw", "normal"), [
    (b"/xyz", b"/xyz"), (b"/x/y/z", b"/x/y/z"),
    (b"/a/b/../c", b"/a/c"), (b"/a/b/./c", b"/a/b/c"), (b"a/b/../c", b"/a/c"),
    (b"/a/b/../../../../c", b"/c"), (b"/a/..\\c", b"/c"), (b"/%c0%af", b"/%c0%af"),
    (b"/%5c%25", b"/%5c%25"), (b"/a/b/%2E%2E/c", b"/a/c"), (b"/a/b/%2E./c", b"/a/c"),
    (b"/a/b/%2E/c", b"/a/b/c"), (b"..", b"/"), (b"/../a/b", b"/a/b"), (b"/./a/b", b"/a/b"),
    (b"/A/B/C", b"/A/B/C"), (b"/a/b/%2e%2e/c", b"/a/c"), (b"/a/%2F%2f/c", b"/a/%2F%2f/c"),
    (b"/%41%7e%5F", b"/A~_"), (b"/a b", b"/a%20b"), (b"/\xc3\xa9", b"/%C3%A9"),
    (b"/a/..?x=/../y", b"/?x=/../y"), (b"/a/...", b"/a/..."), (b"/a/.b", b"/a/.b"),
    (b"/a%%30%30", b"/a%2500"), (b"", b"/"),
])
def test_canonical(raw: bytes, normal: bytes) -> None:
    assert canonical(raw) == normal


@pytest.mark.parametrize("raw", [b"/xyz/.%00../abc", b"/xyz/%00.%00./abc",
                                 b"/xyz/AAAAA%%0000/abc"])
def test_an_escaped_nul_cannot_be_made_canonical(raw: bytes) -> None:
    assert canonical(raw) is None


@pytest.mark.parametrize(("raw", "merged"), [
    (b"", b""), (b"a//b/c", b"a/b/c"), (b"/a//b/c/", b"/a/b/c/"), (b"a//b/c/", b"a/b/c/"),
    (b"/a", b"/a"), (b"//a/b/c", b"/a/b/c"), (b"/a/b/c//", b"/a/b/c/"),
    (b"/a////b/c", b"/a/b/c"), (b"/a//b?a=///c", b"/a/b?a=///c"), (b"/a//b?", b"/a/b?"),
    (b"//a/?b", b"/a/?b"),
])
def test_merge_slashes(raw: bytes, merged: bytes) -> None:
    assert merge_slashes(raw) == merged


def test_escaped_slashes_in_the_path_only() -> None:
    assert unescape_slashes(b"/a%2Fb%2fc%5Cd%5ce?q=%2F") == b"/a/b/c\\d\\e?q=%2F"


def test_policy_order_and_outcomes() -> None:
    assert PathPolicy(escaped_slashes="REJECT_REQUEST").apply(b"/a%2fb")[0] is Outcome.REJECT
    assert PathPolicy(escaped_slashes="UNESCAPE_AND_REDIRECT").apply(b"/a%2F..%2Fb") == (
        Outcome.REDIRECT, b"/a/../b")
    both = PathPolicy(normalize=True, merge=True, escaped_slashes="UNESCAPE_AND_FORWARD")
    assert both.apply(b"//x/a%2F..%2F%2Fadmin") == (Outcome.CONTINUE, b"/x/admin")
    assert PathPolicy(normalize=True).apply(b"/%00") == (Outcome.REJECT, b"/%00")
    assert not PathPolicy().active


@pytest.mark.parametrize(("raw", "normal"), [
    (b"/..;/admin", b"/admin"), (b"/a/..;x/b", b"/b"), (b"/a/.;/b", b"/a/b"), (b"/a/..;", b"/"),
    (b"/a/%2e%2e;/b", b"/a/..;/b"), (b"/a/.%2e;/b", b"/a/..;/b"), (b"/a/..;x;y/b", b"/b"),
    (b"/a/..;\\b", b"/"), (b"/a/..;%2fb/c", b"/c"), (b"/a/.;", b"/a/"), (b"/a/..;x%00/b", b"/b"),
    (b"/a/...;/b", b"/a/...;/b"), (b"/a/x..;/b", b"/a/x..;/b"), (b"/a;b/c", b"/a;b/c"),
])
def test_dot_segments_with_parameters(raw: bytes, normal: bytes) -> None:
    """What Envoy 1.40 was seen to do with ``..;`` (a Tomcat path-parameter bypass)."""
    assert canonical(raw) == normal
