"""Envoy access log format strings (command operators) compiled once at config load.

A template such as ``[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
%RESPONSE_CODE% %RESPONSE_FLAGS%`` becomes a list of literal pieces and small functions of the
finished stream, so logging a request is a join, not a parse. ``json_format`` objects become
the same functions per key; single operators that are numbers stay numbers, as in Envoy.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from collections.abc import Callable
from typing import Any

from ..config import model as m
from ..config.datasource import read
from ..http.stream_info import StreamInfo

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

Value = str | int | None
Op = Callable[[StreamInfo], Value]
_TOKEN = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::(\d+))?%")
_NUMERIC = {"RESPONSE_CODE", "BYTES_RECEIVED", "BYTES_SENT", "DURATION"}
_HOSTNAME = socket.gethostname()


def _time(fmt: str | None) -> Op:
    """START_TIME with Envoy's strftime extensions (%f, %3f … %9f, %s)."""
    if not fmt:
        return lambda s: _iso(s.start_time)
    parts = re.split(r"(%\d?f|%s)", fmt)

    def render(s: StreamInfo) -> str:
        t = dt.datetime.fromtimestamp(s.start_time, dt.UTC)
        ns = f"{int(round(s.start_time % 1 * 1e9)):09d}"
        out = []
        for p in parts:
            if p == "%s":
                out.append(str(int(s.start_time)))
            elif re.fullmatch(r"%\d?f", p):
                out.append(ns[: int(p[1]) if len(p) == 3 else 9])
            else:
                out.append(t.strftime(p))
        return "".join(out)

    return render


def _iso(ts: float) -> str:
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


_PSEUDO = {":authority": b"host", ":method": None, ":path": None, ":scheme": None}


def _header(which: str, arg: str | None) -> Op:
    if not arg:
        raise ValueError(f"%{which}(...)% needs a header name")
    names = [n.strip().lower() for n in arg.split("?")]
    if len(names) > 2:
        raise ValueError(f"%{which}({arg})%: at most one alternative header (X?Y)")

    def one(s: StreamInfo, name: str) -> str | None:
        if which == "REQ":
            if s.request is None:  # (a tcp_proxy session)
                return None
            if name == ":method":
                return s.request.method.decode("latin-1")
            if name == ":path":
                return s.request.path.decode("latin-1")
            if name == ":scheme":
                return "https" if s.downstream.tls else "http"
            headers = s.request.headers
        elif s.response_headers is not None:
            headers = s.response_headers
        else:
            return None
        key = (_PSEUDO.get(name) if name in _PSEUDO else None) or name.encode("latin-1")
        for k, v in headers:
            if k == key:
                return v.decode("latin-1")
        return None

    def get(s: StreamInfo) -> str | None:
        for name in names:
            v = one(s, name)
            if v is not None:
                return v
        return None

    return get


def _address(s: StreamInfo) -> str:
    return m.address_string(s.remote_ip, s.remote_port)


def _direct(s: StreamInfo) -> str:
    return m.address_string(s.downstream.direct_remote_ip, s.downstream.direct_remote_port)


OPERATORS: dict[str, Callable[[str | None], Op]] = {
    "START_TIME": _time,
    "REQ": lambda a: _header("REQ", a),
    "RESP": lambda a: _header("RESP", a),
    "PROTOCOL": lambda a: lambda s: s.protocol,
    "RESPONSE_CODE": lambda a: lambda s: s.code,
    "RESPONSE_CODE_DETAILS": lambda a: lambda s: s.details or None,
    "RESPONSE_FLAGS": lambda a: lambda s: s.flags_text(),  # "-" when none, in JSON too (Envoy)
    "BYTES_RECEIVED": lambda a: lambda s: s.bytes_received,
    "BYTES_SENT": lambda a: lambda s: s.bytes_sent,
    "DURATION": lambda a: lambda s: s.duration_ms(),
    "UPSTREAM_HOST": lambda a: lambda s: s.host.label if s.host else None,
    "UPSTREAM_CLUSTER": lambda a: lambda s: s.cluster.name if s.cluster else None,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda a: lambda s: s.failure_reason or None,
    "DOWNSTREAM_REMOTE_ADDRESS": lambda a: _address,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda a: _direct,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda a: lambda s: s.remote_ip,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda a: lambda s: s.downstream.direct_remote_ip,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda a: lambda s: s.downstream.local_address,
    "REQUESTED_SERVER_NAME": lambda a: lambda s: s.downstream.sni,
    "ROUTE_NAME": lambda a: lambda s: (s.route.name or None) if s.route else None,
    "HOSTNAME": lambda a: lambda s: _HOSTNAME,
    "LOCAL_REPLY_BODY": lambda a: lambda s: s.local_reply_body,
}


def _compile_text(text: str) -> list[str | tuple[Op, int | None, str]]:
    pieces: list[str | tuple[Op, int | None, str]] = []
    pos = 0
    for mt in _TOKEN.finditer(text):
        pieces.append(text[pos:mt.start()].replace("%%", "%"))
        name, arg, maxlen = mt.group(1), mt.group(2), mt.group(3)
        factory = OPERATORS.get(name)
        if factory is None:
            raise ValueError(f"access log format: command operator %{name}% is not supported "
                             f"by edgegw (supported: {', '.join(sorted(OPERATORS))})")
        pieces.append((factory(arg), int(maxlen) if maxlen else None, name))
        pos = mt.end()
    rest = text[pos:]
    if "%" in rest.replace("%%", ""):
        raise ValueError(f"access log format: malformed command operator near '{rest[:30]}'")
    pieces.append(rest.replace("%%", "%"))
    return [p for p in pieces if p != ""]


def _value(op: Op, maxlen: int | None, s: StreamInfo) -> Value:
    v = op(s)
    if isinstance(v, str) and maxlen is not None:
        v = v[:maxlen]
    return v


def text_formatter(text: str, omit_empty: bool = False) -> Callable[[StreamInfo], str]:
    pieces = _compile_text(text)

    def render(s: StreamInfo) -> str:
        out = []
        for p in pieces:
            if isinstance(p, str):
                out.append(p)
            else:
                v = _value(p[0], p[1], s)
                out.append("" if v is None and omit_empty else "-" if v is None else str(v))
        return "".join(out)

    return render


def _json_node(node: Any) -> Callable[[StreamInfo], Any]:
    if isinstance(node, dict):
        items = [(k, _json_node(v)) for k, v in node.items()]
        return lambda s: {k: f(s) for k, f in items}
    if not isinstance(node, str):
        return lambda s: node
    pieces = _compile_text(node)
    if len(pieces) == 1 and not isinstance(pieces[0], str):
        op, maxlen, name = pieces[0]
        if name in _NUMERIC:
            return lambda s: op(s)
        return lambda s: _value(op, maxlen, s)
    fmt = text_formatter(node)
    return fmt


def json_formatter(obj: dict[str, Any], omit_empty: bool = False
                   ) -> Callable[[StreamInfo], str]:
    build = _json_node(obj)

    def render(s: StreamInfo) -> str:
        doc = build(s)
        if omit_empty:
            doc = {k: v for k, v in doc.items() if v not in (None, "")}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"

    return render


def compile_template(t: m.SubstitutionFormatString | None) -> Callable[[StreamInfo], str]:
    """A formatter for a log_format (or Envoy's default format when there is none)."""
    if t is None:
        return text_formatter(DEFAULT_FORMAT)
    if t.json_format is not None:
        return json_formatter(t.json_format, t.omit_empty_values)
    text = t.text_format if t.text_format is not None else read(
        t.text_format_source).decode() if t.text_format_source else ""
    return text_formatter(text, t.omit_empty_values)
