"""Envoy's RBAC engine (extensions/filters/common/rbac), shared by the HTTP filter and the
network filter: who may reach what.

A policy matches when any of its permissions matches the request and any of its principals
matches who sent it. ``ALLOW`` rules let a request through only if a policy matches; ``DENY``
rules refuse it if one does; ``LOG`` rules refuse nothing. ``shadow_rules`` are evaluated and
counted, never enforced.

The addresses are Envoy's: ``remote_ip`` is the request's client (after trusted XFF hops,
original IP detection or a PROXY header), ``source_ip`` the connection's (after a PROXY
header), ``direct_remote_ip`` the socket peer.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from mypy_extensions import mypyc_attr

from .config import model as m
from .http.codec import Headers
from .matchers import header_matcher, string_matcher
from .stats import Counter, StatSet

if TYPE_CHECKING:
    from .http.filter import FilterCallbacks


def metadata_of(cb: FilterCallbacks, namespace: str) -> dict[str, Any] | None:
    """A stream's dynamic metadata under ``namespace`` (a filter's name), as Envoy's
    StreamInfo keeps it: in the stream's filter state here."""
    found: dict[str, dict[str, Any]] | None = cb.filter_state.get("dynamic_metadata")
    return found.get(namespace) if found is not None else None

Check = Callable[["Request"], bool]


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class RbacStats(StatSet):
    allowed: Counter
    denied: Counter


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class ShadowStats(StatSet):
    shadow_allowed: Counter
    shadow_denied: Counter


class Request:
    """What the matchers read of one request or connection, computed only as needed."""

    def __init__(self, stream: FilterCallbacks | None, path: bytes, remote_ip: str,
                 source_ip: str, direct_ip: str, local_address: str, transport: object) -> None:
        self._stream = stream
        self._headers: Headers | None = None
        self.raw_path = path
        self.remote_ip = remote_ip
        """The client (after trusted hops, original IP detection, a PROXY header)."""
        self.source_ip = source_ip
        """The connection's client (after a PROXY header)."""
        self.direct_ip = direct_ip
        self.local_address = local_address
        self.transport = transport

    @classmethod
    def of_stream(cls, cb: FilterCallbacks) -> Request:
        conn = cb.conn
        return cls(cb, cb.path, cb.info.remote_ip, conn.remote_ip,
                   getattr(conn, "direct_remote_ip", "") or conn.remote_ip,
                   conn.local_address, getattr(conn, "transport", None))

    @classmethod
    def of_connection(cls, conn: Any) -> Request:  # a DownstreamConnection or TcpSession
        """A connection as the network RBAC filter sees it: addresses, no headers."""
        return cls(None, b"", conn.remote_ip, conn.remote_ip, conn.direct_remote_ip,
                   conn.local_address, conn.transport)

    def address_key(self) -> tuple[str, str, str, str]:
        """All that a policy reading only addresses and ports can tell requests by."""
        return self.remote_ip, self.source_ip, self.direct_ip, self.local_address

    @property
    def headers(self) -> Headers:
        """The request's headers with the pseudo-headers Envoy's matchers see."""
        if self._headers is None:
            cb = self._stream
            if cb is None:
                self._headers = []
            else:
                host = next((v for k, v in cb.headers if k == b"host"), b"")
                self._headers = [(b":method", cb.method), (b":path", cb.path),
                                 (b":authority", host), *cb.headers]
        return self._headers

    @property
    def path(self) -> str:
        return self.raw_path.split(b"?", 1)[0].decode("latin-1")

    @property
    def local_port(self) -> int:
        _, _, port = self.local_address.rpartition(":")
        return int(port) if port.isdigit() else 0

    def tls(self) -> bool:
        transport = self.transport
        get = getattr(transport, "get_extra_info", None)
        return get is not None and get("ssl_object") is not None

    def peer_names(self) -> list[str]:
        """The client certificate's URI SANs, then DNS SANs, then subject (Envoy's order
        for ``authenticated.principal_name``); empty without one."""
        transport = self.transport
        ssl_object = getattr(transport, "get_extra_info", lambda _: None)("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return []
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*san.get_values_for_type(x509.UniformResourceIdentifier),
                     *san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            names = []
        return [*names, cert.subject.rfc4514_string()]


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> tuple[int, int] | None:
    """(IP version, the address as an integer), or None for what is not an address. Clients
    come back again and again, so each text is parsed once."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def _in(cidr: m.CidrRange, address: Callable[[Request], str]) -> Check:
    net = cidr.network
    version, mask, base = net.version, int(net.netmask), int(net.network_address)

    def check(r: Request) -> bool:
        ip = _address(address(r))
        return ip is not None and ip[0] == version and ip[1] & mask == base

    return check


def _any_of(checks: list[Check]) -> Check:
    """One check for a list where any may match (a policy's permissions or principals)."""
    if any(c is ALWAYS for c in checks):
        return ALWAYS
    if len(checks) == 1:
        return checks[0]

    def check(r: Request) -> bool:
        for c in checks:
            if c(r):
                return True
        return False

    return check


def _all_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(r: Request) -> bool:
        for c in checks:
            if not c(r):
                return False
        return True

    return check


def ALWAYS(r: Request) -> bool:  # noqa: N802 (a constant, compared by identity)
    """``any: true``: matches without looking at the request."""
    return True


def NEVER(r: Request) -> bool:  # noqa: N802
    return False


def _headers(hm: m.HeaderMatcher) -> Check:
    match = header_matcher(hm)
    return lambda r: match(r.headers)


def _path(pm: m.PathMatcher) -> Check:
    match = string_matcher(pm.path)
    return lambda r: match(r.path)


def permission(p: m.Permission) -> Check:
    if p.any is not None:
        return ALWAYS if p.any else NEVER
    if p.header is not None:
        return _headers(p.header)
    if p.url_path is not None:
        return _path(p.url_path)
    if p.destination_port is not None:
        port = p.destination_port
        return lambda r: r.local_port == port
    if p.not_rule is not None:
        inner = permission(p.not_rule)
        return lambda r: not inner(r)
    group = p.and_rules or p.or_rules
    assert group is not None
    parts = [permission(x) for x in group.rules]
    return _all_of(parts) if p.and_rules is not None else _any_of(parts)


def value_matcher(vm: m.ValueMatcher) -> Callable[[object], bool]:
    """type.matcher.v3.ValueMatcher on a metadata value (None: absent)."""
    if vm.string_match is not None:
        match = string_matcher(vm.string_match)
        return lambda v: isinstance(v, str) and match(v)
    if vm.bool_match is not None:
        want = vm.bool_match
        return lambda v: isinstance(v, bool) and v == want
    if vm.present_match is not None:
        present = vm.present_match
        return lambda v: (v is not None) == present
    assert vm.list_match is not None
    item = value_matcher(vm.list_match.one_of)
    return lambda v: isinstance(v, list) and any(item(x) for x in v)


def _metadata(mm: m.MetadataMatcher) -> Check:
    """The request's dynamic metadata (jwt_authn's payload) at ``filter``, then ``path``."""
    match = value_matcher(mm.value)
    keys = [seg.key for seg in mm.path]
    namespace, invert = mm.filter, mm.invert

    def check(r: Request) -> bool:
        node: object = metadata_of(r._stream, namespace) if r._stream is not None else None
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return match(node) != invert

    return check


def principal(p: m.Principal) -> Check:
    if p.any is not None:
        return ALWAYS if p.any else NEVER
    if p.remote_ip is not None:
        return _in(p.remote_ip, lambda r: r.remote_ip)
    if p.source_ip is not None:
        return _in(p.source_ip, lambda r: r.source_ip)
    if p.direct_remote_ip is not None:
        return _in(p.direct_remote_ip, lambda r: r.direct_ip)
    if p.header is not None:
        return _headers(p.header)
    if p.url_path is not None:
        return _path(p.url_path)
    if p.metadata is not None:
        return _metadata(p.metadata)
    if p.authenticated is not None:
        name = p.authenticated.principal_name
        if name is None:
            # As Envoy's AuthenticatedMatcher: any TLS connection, with a client
            # certificate or without one.
            return lambda r: r.tls()
        match = string_matcher(name)
        return lambda r: any(match(n) for n in r.peer_names())
    if p.not_id is not None:
        inner = principal(p.not_id)
        return lambda r: not inner(r)
    group = p.and_ids or p.or_ids
    assert group is not None
    parts = [principal(x) for x in group.ids]
    return _all_of(parts) if p.and_ids is not None else _any_of(parts)


class Engine:
    """One compiled config.rbac.v3.RBAC: its policies in name order, as Envoy's map."""

    def __init__(self, rules: m.RbacRules) -> None:
        self.action = rules.action
        self.policies = [
            (name, _any_of([permission(p) for p in pol.permissions]),
             _any_of([principal(p) for p in pol.principals]))
            for name, pol in sorted(rules.policies.items())]

    def matched(self, r: Request) -> str | None:
        """The first policy that matches, or None."""
        for name, perm, princ in self.policies:
            if perm(r) and princ(r):
                return name
        return None

    def allows(self, r: Request) -> tuple[bool, str | None]:
        name = self.matched(r)
        if self.action == "ALLOW":
            return name is not None, name
        if self.action == "DENY":
            return name is None, name
        return True, name


def _reads_request(p: m.Permission | m.Principal) -> bool:
    """Whether a rule may read more than addresses and ports (headers, path, client
    certificate, or a kind added later): only rules that cannot are decided once per client."""
    inner: list[m.Permission] | list[m.Principal] | None
    if isinstance(p, m.Permission):
        if p.any is not None or p.destination_port is not None:
            return False
        group = p.and_rules or p.or_rules
        inner = [p.not_rule] if p.not_rule else group.rules if group else None
    else:
        if p.any is not None or p.remote_ip is not None or p.source_ip is not None \
                or p.direct_remote_ip is not None:
            return False
        ids = p.and_ids or p.or_ids
        inner = [p.not_id] if p.not_id else ids.ids if ids else None
    return inner is None or any(_reads_request(x) for x in inner)


def _by_address(rules: m.RbacRules | None) -> bool:
    return rules is None or not any(
        any(map(_reads_request, pol.permissions)) or any(map(_reads_request, pol.principals))
        for pol in rules.policies.values())


DECIDED_MAX = 4096
"""Clients whose decision is kept, for rules that read only addresses."""

Decision = tuple[bool | None, bool | None, str | None]
"""(shadow rules allow, rules allow, the policy that decided); None: no such rules."""


class Rules:
    """Enforced and shadow rules (either may be absent), checked and counted together.

    Rules that read only addresses and ports (an IP allow-list, the common case) decide once
    per client address and reuse it: the same client asks again and again."""

    def __init__(self, rules: m.RbacRules | None, shadow: m.RbacRules | None) -> None:
        self.rules = Engine(rules) if rules is not None else None
        self.shadow = Engine(shadow) if shadow is not None else None
        self.by_address = _by_address(rules) and _by_address(shadow)
        self.decided: dict[tuple[str, str, str, str], Decision] = {}

    def _decide(self, r: Request) -> Decision:
        shadow_ok = self.shadow.allows(r)[0] if self.shadow is not None else None
        if self.rules is None:
            return shadow_ok, None, None
        ok, name = self.rules.allows(r)
        return shadow_ok, ok, name

    def check(self, r: Request, stats: RbacStats, shadow_stats: ShadowStats
              ) -> tuple[bool, str | None]:
        """(allowed, the policy that decided); shadow rules are counted, never enforced."""
        if self.by_address:
            key = r.address_key()
            decision = self.decided.get(key)
            if decision is None:
                decision = self._decide(r)
                if len(self.decided) >= DECIDED_MAX:
                    self.decided.clear()
                self.decided[key] = decision
        else:
            decision = self._decide(r)
        shadow_ok, ok, name = decision
        if shadow_ok is not None:
            (shadow_stats.shadow_allowed if shadow_ok else shadow_stats.shadow_denied
             ).value += 1
        if ok is None:
            return True, None
        (stats.allowed if ok else stats.denied).value += 1
        return ok, name


def join(prefix: str, more: str) -> str:
    """Envoy's statPrefixJoin: a given sub-prefix gets its own dot."""
    return f"{prefix}{more}." if more and not more.endswith(".") else prefix + more
