"""Checks that span several parts of a bootstrap, run after the typed model has loaded.

These are the errors Envoy reports when it builds its runtime from a config (unknown cluster,
duplicate domains, a key that does not match its certificate), reported here at validate time
with the path of the field to fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator

from pydantic import ValidationError

from ..accesslog.format import compile_template
from ..tls.certs import load_pair, parse_chain
from ..tls.secrets import SecretError, materialize, read_sds_file
from ..tls.tickets import read_key
from .datasource import DataSourceError, read
from .htpasswd import parse_users
from .model import (
    AccessLog,
    ApiConfigSource,
    BasicAuth,
    BasicAuthPerRoute,
    Bootstrap,
    Cluster,
    CommonTlsContext,
    ConfigSource,
    DataSource,
    FilterChain,
    FilterConfig,
    HttpConnectionManager,
    Listener,
    OAuth2,
    PerFilterConfig,
    RouteConfiguration,
    SdsSecretConfig,
    Secret,
    TcpProxy,
)
from .source import Path

Problem = tuple[Path, str]


def cross_check(boot: Bootstrap) -> list[Problem]:
    out: list[Problem] = []
    static = {sec.name: sec for sec in boot.static_resources.secrets}
    clusters = boot.static_resources.clusters
    names = [c.name for c in clusters]
    for i, c in enumerate(clusters):
        base: Path = ("static_resources", "clusters", i)
        if names.index(c.name) != i:
            out.append((base + ("name",), f"duplicate cluster name '{c.name}'"))
        out.extend(_check_cluster(c, base, static))
    known = set(names)
    seen_addr: dict[tuple[str, int], int] = {}
    seen_names: set[str] = set()
    for i, lst in enumerate(boot.static_resources.listeners):
        base = ("static_resources", "listeners", i)
        if lst.name and lst.name in seen_names:
            out.append((base + ("name",), f"duplicate listener name '{lst.name}'"))
        seen_names.add(lst.name)
        sa = lst.address.socket_address
        key = (sa.address, sa.port_value)
        if key in seen_addr:
            out.append((base + ("address",), f"listener address {sa.address}:{sa.port_value} "
                        f"is already used by listeners[{seen_addr[key]}]"))
        seen_addr[key] = i
        out.extend(_check_ip(sa.address, base + ("address", "socket_address", "address")))
        out.extend(_check_listener(lst, base, known, static))
    out.extend(_check_proxy_protocol_clusters(boot))
    out.extend(_check_control_plane(boot))
    if boot.admin.address is not None:
        out.extend(_check_ip(boot.admin.address.socket_address.address,
                             ("admin", "address", "socket_address", "address")))
    if boot.admin.access_log_path:
        out.extend(_check_writable(boot.admin.access_log_path, ("admin", "access_log_path")))
    for i, sec in enumerate(boot.static_resources.secrets):
        try:
            materialize(sec)
        except SecretError as e:
            out.append((("static_resources", "secrets", i), str(e)))
    if _uses_file_sds(boot) and not (boot.node.id and boot.node.cluster):
        out.append((("node",), "file-based SDS secrets need node.id and node.cluster to be set "
                    "(Envoy requires them too)"))
    if not (boot.node.id and boot.node.cluster):
        for kind, used in (("EDS clusters", any(c.type == "EDS" for c in clusters)),
                           ("RDS routes", any(h.rds is not None for h in _hcms(boot)))):
            if used:
                out.append((("node",), f"{kind} from files need node.id and node.cluster to "
                            "be set, in node or by --service-node and --service-cluster "
                            "(Envoy requires them too)"))
    return out


def _hcms(boot: Bootstrap) -> Iterator[HttpConnectionManager]:
    for lst in boot.static_resources.listeners:
        for fc in [*lst.filter_chains, *([lst.default_filter_chain]
                                         if lst.default_filter_chain else [])]:
            if isinstance(fc.terminal, HttpConnectionManager):
                yield fc.terminal


def _tls_contexts(boot: Bootstrap) -> Iterator[CommonTlsContext]:
    for lst in boot.static_resources.listeners:
        for fc in [*lst.filter_chains, *([lst.default_filter_chain]
                                         if lst.default_filter_chain else [])]:
            if fc.transport_socket:
                yield fc.transport_socket.typed_config.common_tls_context
    for c in boot.static_resources.clusters:
        tls = c.transport_socket.tls if c.transport_socket else None
        if tls is not None:
            yield tls.common_tls_context


def _check_proxy_protocol_clusters(boot: Bootstrap) -> Iterator[Problem]:
    """A PROXY protocol upstream socket carries one client's address per connection: edgegw
    has it on tcp_proxy clusters, where connections are one client's each; HTTP connection
    pools share theirs, so an HTTP route to such a cluster is refused."""
    pp_clusters = {i: c.name for i, c in enumerate(boot.static_resources.clusters)
                   if c.transport_socket and c.transport_socket.proxy_protocol}
    if not pp_clusters:
        return
    names = set(pp_clusters.values())
    for li, lst in enumerate(boot.static_resources.listeners):
        for fc in [*lst.filter_chains, *([lst.default_filter_chain]
                                         if lst.default_filter_chain else [])]:
            for f in fc.filters:
                typed = f.typed_config
                if not isinstance(typed, HttpConnectionManager):
                    continue
                for vh in typed.route_config.virtual_hosts if typed.route_config else []:
                    for r in vh.routes:
                        action = r.route
                        used = {action.cluster} | {w.name for w in (
                            action.weighted_clusters.clusters if action.weighted_clusters
                            else [])} if action else set()
                        for name in used & names:
                            i = next(k for k, n in pp_clusters.items() if n == name)
                            yield (("static_resources", "clusters", i, "transport_socket"),
                                   f"cluster '{name}' sends a PROXY protocol header, which "
                                   "edgegw supports under tcp_proxy only, but an HTTP route "
                                   f"of listeners[{li}] uses it")


def config_sources(boot: Bootstrap) -> Iterator[tuple[Path, ConfigSource]]:
    """Every config source of a control plane's kind, with its path."""
    dyn = boot.dynamic_resources
    for key in ("lds_config", "cds_config"):
        cs = getattr(dyn, key) if dyn else None
        if cs is not None:
            yield ("dynamic_resources", key), cs
    for i, c in enumerate(boot.static_resources.clusters):
        if c.eds_cluster_config is not None:
            yield (("static_resources", "clusters", i, "eds_cluster_config", "eds_config"),
                   c.eds_cluster_config.eds_config)
    for i, lst in enumerate(boot.static_resources.listeners):
        base: Path = ("static_resources", "listeners", i)
        chains = [(base + ("filter_chains", j), fc) for j, fc in enumerate(lst.filter_chains)]
        if lst.default_filter_chain:
            chains.append((base + ("default_filter_chain",), lst.default_filter_chain))
        for path, fc in chains:
            for k, f in enumerate(fc.filters):
                hcm = f.typed_config
                if isinstance(hcm, HttpConnectionManager) and hcm.rds is not None:
                    yield (path + ("filters", k, "typed_config", "rds", "config_source"),
                           hcm.rds.config_source)
    for ctx in _tls_contexts(boot):
        for ref in [*ctx.tls_certificate_sds_secret_configs,
                    *([ctx.validation_context_sds_secret_config]
                      if ctx.validation_context_sds_secret_config else [])]:
            if ref.sds_config is not None:
                yield ("secret", ref.name, "sds_config"), ref.sds_config


def _check_control_plane(boot: Bootstrap) -> Iterator[Problem]:
    """``ads: {}`` needs an ads_config; a gRPC service's cluster must be a static cluster
    that speaks HTTP/2 (gRPC rides edgegw's own HTTP/2 connections to it)."""
    dyn = boot.dynamic_resources
    ads = dyn.ads_config if dyn else None
    apis: list[tuple[Path, ApiConfigSource]] = (
        [(("dynamic_resources", "ads_config"), ads)] if ads else [])
    for path, cs in config_sources(boot):
        if cs.ads is not None and ads is None:
            yield (path + ("ads",), "ads: {} needs dynamic_resources.ads_config (the control "
                   "plane's stream)")
        if cs.api_config_source is not None:
            apis.append((path + ("api_config_source",), cs.api_config_source))
    clusters = {c.name: c for c in boot.static_resources.clusters}
    for path, api in apis:
        if path[-1] == "ads_config" and api.api_type == "REST":
            yield (path + ("api_type",), "REST is not an ADS transport: use GRPC or DELTA_GRPC")
        named: list[tuple[Path, str]] = [
            (path + ("grpc_services", i, "envoy_grpc", "cluster_name"), svc.envoy_grpc.cluster_name)
            for i, svc in enumerate(api.grpc_services)]
        named += [(path + ("cluster_names", i), n) for i, n in enumerate(api.cluster_names)]
        for where, name in named:
            c = clusters.get(name)
            if c is None or c.type == "EDS" or boot.dynamic.get("clusters") and any(
                    d.get("name") == name for d in boot.dynamic["clusters"]):
                yield (where, "envoy.config.core.v3.ApiConfigSource must have a statically "
                       f"defined non-EDS cluster: '{name}' does not exist, was added via api, "
                       "or is an EDS cluster")
            elif c.http2_options is None and api.api_type != "REST":
                yield (where, f"envoy_grpc: cluster '{name}' must speak HTTP/2 for gRPC: give "
                       "it explicit_http_config.http2_protocol_options")


def _uses_file_sds(boot: Bootstrap) -> bool:
    return any(ref.sds_config is not None for ctx in _tls_contexts(boot)
               for ref in [*ctx.tls_certificate_sds_secret_configs,
                           *([ctx.validation_context_sds_secret_config]
                             if ctx.validation_context_sds_secret_config else [])])


def _check_sds(ref: SdsSecretConfig, want: str, path: Path,
               static: dict[str, Secret]) -> Iterator[Problem]:
    """An SDS reference must name a readable file holding one secret of the right kind."""
    if ref.sds_config is None:
        secret = static.get(ref.name)
        if secret is None:
            yield (path + ("name",), f"no secret named '{ref.name}' in static_resources.secrets "
                   "(or give an sds_config with a path_config_source)")
            return
    elif ref.sds_config.xds:
        return  # (checked as it arrives)
    else:
        try:
            secret = read_sds_file(ref.sds_config.file, ref.name)
            materialize(secret)
        except SecretError as e:
            yield (path + ("sds_config",), str(e))
            return
    if getattr(secret, want) is None:
        yield (path, f"secret '{ref.name}' has no {want}")


def _check_ip(address: str, path: Path) -> Iterator[Problem]:
    """Listeners and the admin port bind IP addresses, as in Envoy ("malformed IP address")."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        yield (path, f"malformed IP address: {address}")


def _check_cluster(c: Cluster, base: Path, static: dict[str, Secret]) -> Iterator[Problem]:
    eps = [(li, ei, e.endpoint) for li, loc in enumerate(c.load_assignment.endpoints)
           for ei, e in enumerate(loc.lb_endpoints)] if c.load_assignment else []
    if c.type == "LOGICAL_DNS" and len(eps) != 1:
        yield (base + ("load_assignment",),
               "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint")
    for li, ei, ep in eps:
        path = base + ("load_assignment", "endpoints", li, "lb_endpoints", ei, "endpoint",
                       "address", "socket_address", "address")
        if c.type == "STATIC":
            try:
                ipaddress.ip_address(ep.address.socket_address.address)
            except ValueError:
                yield (path, f"'{ep.address.socket_address.address}' is not an IP address "
                       "(STATIC clusters take IP addresses; use STRICT_DNS or LOGICAL_DNS "
                       "for host names)")
        if ep.address.socket_address.port_value == 0:
            yield (path[:-1] + ("port_value",), "an endpoint needs a port_value")
    if c.eds_cluster_config is not None:
        yield from _check_path_source(c.eds_cluster_config.eds_config,
                                      base + ("eds_cluster_config", "eds_config"))
    tls = c.transport_socket.tls if c.transport_socket else None
    if tls is not None:
        inner = () if tls is c.transport_socket.typed_config else (  # type: ignore[union-attr]
            "transport_socket", "typed_config")
        yield from _check_tls_files(
            tls.common_tls_context,
            base + ("transport_socket", "typed_config", *inner, "common_tls_context"), static)


def _check_tls_files(ctx: CommonTlsContext, base: Path,
                     static: dict[str, Secret]) -> Iterator[Problem]:
    for i, ref in enumerate(ctx.tls_certificate_sds_secret_configs):
        yield from _check_sds(ref, "tls_certificate",
                              base + ("tls_certificate_sds_secret_configs", i), static)
    if ctx.validation_context_sds_secret_config is not None:
        yield from _check_sds(ctx.validation_context_sds_secret_config, "validation_context",
                              base + ("validation_context_sds_secret_config",), static)
    for i, cert in enumerate(ctx.tls_certificates):
        try:
            load_pair(cert.certificate_chain, cert.private_key)
        except DataSourceError as e:
            yield (base + ("tls_certificates", i), str(e))
    vc = ctx.validation_context
    if vc and vc.trusted_ca:
        yield from _check_ca(vc.trusted_ca, base + ("validation_context", "trusted_ca"))
    for i, m in enumerate(vc.match_typed_subject_alt_names if vc else []):
        if m.matcher.safe_regex:
            yield from _check_regex(m.matcher.safe_regex.regex,
                                    base + ("validation_context", "match_typed_subject_alt_names", i))


def _check_ca(ds: DataSource, path: Path) -> Iterator[Problem]:
    try:
        parse_chain(read(ds), "trusted_ca")
    except DataSourceError as e:
        yield (path, str(e))


def _check_regex(regex: str, path: Path) -> Iterator[Problem]:
    try:
        re.compile(regex)
    except re.error as e:
        yield (path, f"invalid regex '{regex}': {e}")


OWN_CHAIN_SETTINGS = ("certificate_directory", "strict_sni_host", "websocket_close_on_idle",
                      "basic_auth_users")
"""edgegw's settings in a filter chain's ``metadata.filter_metadata.edgegw``."""
_SERVER_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")


def _check_listener(lst: Listener, base: Path, clusters: set[str],
                    static: dict[str, Secret]) -> Iterator[Problem]:
    chains: list[tuple[Path, FilterChain]] = [
        (base + ("filter_chains", i), fc) for i, fc in enumerate(lst.filter_chains)
    ]
    if lst.default_filter_chain:
        chains.append((base + ("default_filter_chain",), lst.default_filter_chain))
    seen: dict[tuple[str, str, str], Path] = {}
    for path, fc in chains:
        m = fc.filter_chain_match
        for j, name in enumerate(m.server_names):
            if not _SERVER_NAME.match(name):
                yield (path + ("filter_chain_match", "server_names", j),
                       f"invalid server name '{name}': use an exact name or a '*.' prefix "
                       "wildcard such as '*.example.com'")
        if path[-1] != "default_filter_chain":
            for key in _match_keys(fc):
                if key in seen:
                    yield (path + ("filter_chain_match",),
                           "multiple filter chains with the same matching rules are defined "
                           f"(same as {_short(seen[key])})")
                    break
                seen[key] = path
        ours = fc.metadata.filter_metadata.get("edgegw") if fc.metadata else None
        if ours is not None:
            mpath = path + ("metadata", "filter_metadata", "edgegw")
            for setting in ours:
                if setting not in OWN_CHAIN_SETTINGS:
                    yield (mpath + (setting,), f"'{setting}' is not an edgegw setting (known: "
                           f"{', '.join(OWN_CHAIN_SETTINGS)})")
            if "basic_auth_users" in ours:
                yield from _check_own_users(ours["basic_auth_users"], fc,
                                            mpath + ("basic_auth_users",))
            for flag in ("strict_sni_host", "websocket_close_on_idle"):
                if ours.get(flag) is not None and not isinstance(ours.get(flag), bool):
                    yield (mpath + (flag,), f"{flag} is true or false")
            strict = ours.get("strict_sni_host")
            if strict and not fc.transport_socket:
                yield (mpath + ("strict_sni_host",), "strict_sni_host needs a TLS "
                       "transport_socket on the same filter chain")
            cdir = ours.get("certificate_directory")
            if cdir is not None and not os.path.isdir(str(cdir)):
                yield (mpath + ("certificate_directory",), f"'{cdir}' is not a directory")
            if cdir is not None and not fc.transport_socket:
                yield (mpath + ("certificate_directory",), "a certificate directory needs a "
                       "TLS transport_socket on the same filter chain")
        if fc.transport_socket:
            tls = fc.transport_socket.typed_config
            yield from _check_tls_files(
                tls.common_tls_context,
                path + ("transport_socket", "typed_config", "common_tls_context"), static,
            )
            for i, ds in enumerate(tls.session_ticket_keys.keys if tls.session_ticket_keys
                                   else []):
                try:
                    read_key(ds)
                except DataSourceError as e:
                    yield (path + ("transport_socket", "typed_config", "session_ticket_keys",
                                   "keys", i), str(e))
        for k, f in enumerate(fc.filters):
            fpath = path + ("filters", k, "typed_config")
            if isinstance(f.typed_config, TcpProxy):
                yield from _check_tcp_proxy(f.typed_config, fpath, clusters)
            elif isinstance(f.typed_config, HttpConnectionManager):
                yield from _check_hcm(f.typed_config, fpath, clusters, static)


def _short(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[2:]).lstrip(".")


def _match_keys(fc: FilterChain) -> Iterator[tuple[str, str, str]]:
    m = fc.filter_chain_match
    for sn in m.server_names or [""]:
        for alpn in m.application_protocols or [""]:
            yield (sn.lower(), m.transport_protocol, alpn)


def _check_tcp_proxy(tcp: TcpProxy, base: Path, clusters: set[str]) -> Iterator[Problem]:
    if tcp.cluster and tcp.cluster not in clusters:
        yield (base + ("cluster",), f"unknown cluster '{tcp.cluster}'")
    for i, c in enumerate(tcp.weighted_clusters.clusters if tcp.weighted_clusters else []):
        if c.name not in clusters:
            yield (base + ("weighted_clusters", "clusters", i, "name"),
                   f"unknown cluster '{c.name}'")
    yield from _check_access_logs(tcp.access_log, base)


def _check_users(ds: DataSource, where: Path, bcrypt: bool = False) -> Iterator[Problem]:
    """A basic_auth users list must load: every htpasswd line, as the filter reads it."""
    try:
        parse_users(read(ds).decode("utf-8", "replace"), bcrypt)
    except (DataSourceError, ValueError) as e:
        yield (where, f"users: {e}")


def _check_per_route_users(per_filter: dict[str, PerFilterConfig], base: Path
                           ) -> Iterator[Problem]:
    """A route's or virtual host's BasicAuthPerRoute users, also inside a FilterConfig."""
    for name, pf in per_filter.items():
        at = base + ("typed_per_filter_config", name)
        inner = pf.config if isinstance(pf, FilterConfig) else pf
        if isinstance(inner, BasicAuthPerRoute):
            yield from _check_users(inner.users, at + (("config", "users")
                                                       if inner is not pf else ("users",)))


def _check_own_users(value: object, fc: FilterChain, where: Path) -> Iterator[Problem]:
    """``basic_auth_users``: a DataSource of htpasswd lines (bcrypt allowed), for the chain's
    one basic_auth filter."""
    try:
        ds = DataSource.model_validate(value)
    except ValidationError:
        yield (where, "basic_auth_users is a DataSource: {filename: FILE} or "
                      "{inline_string: LINES}")
        return
    hcm = fc.terminal
    if not isinstance(hcm, HttpConnectionManager) or not any(
            isinstance(f.typed_config, BasicAuth) for f in hcm.http_filters):
        yield (where, "basic_auth_users needs an envoy.filters.http.basic_auth filter in the "
                      "chain's http_connection_manager (its users are the ones Envoy reads)")
    yield from _check_users(ds, where, bcrypt=True)


def _check_hcm(hcm: HttpConnectionManager, base: Path, clusters: set[str],
               static: dict[str, Secret]) -> Iterator[Problem]:
    filters = hcm.http_filters
    for i, f in enumerate(filters):
        if isinstance(f.typed_config, BasicAuth):
            yield from _check_users(f.typed_config.users,
                                    base + ("http_filters", i, "typed_config", "users"))
        if isinstance(f.typed_config, OAuth2) and f.typed_config.config is not None:
            creds = f.typed_config.config.credentials
            where = base + ("http_filters", i, "typed_config", "config", "credentials")
            for field in ("token_secret", "hmac_secret"):
                yield from _check_sds(getattr(creds, field), "generic_secret",
                                      where + (field,), static)
        last = i == len(filters) - 1
        if (f.kind == "router") != last:
            yield (base + ("http_filters", i, "name"),
                   f"'{f.name}': the router must be the last HTTP filter (edgegw also has "
                   "envoy.filters.http.fault, local_ratelimit and rbac before it)"
                   if not last else
                   f"'{f.name}': the last HTTP filter must be envoy.filters.http.router")
    if hcm.route_config is not None:
        yield from _check_routes(hcm.route_config, base + ("route_config",), clusters)
    else:  # (RDS: the routes are checked as each version of the file arrives)
        yield from _check_path_source(hcm.rds.config_source,  # type: ignore[union-attr]
                                      base + ("rds", "config_source"))
    yield from _check_access_logs(hcm.access_log, base)


def _check_path_source(source: ConfigSource, where: Path) -> Iterator[Problem]:
    """A file subscription's file must be there at start, as Envoy requires."""
    if not source.xds and not os.path.exists(source.file):
        yield (where, "paths must refer to an existing path in the system: "
                      f"'{source.file}' does not exist")


def _check_routes(rc: RouteConfiguration, base: Path, clusters: set[str]) -> Iterator[Problem]:
    domains: dict[str, int] = {}
    for v, vh in enumerate(rc.virtual_hosts):
        vpath = base + ("virtual_hosts", v)
        for d, dom in enumerate(vh.domains):
            key = dom.lower()
            if key in domains:
                yield (vpath + ("domains", d), f"only unique values for domains are permitted: "
                       f"'{dom}' is also in virtual_hosts[{domains[key]}]")
            domains.setdefault(key, v)
            if "*" in dom and dom != "*" and not (dom.startswith("*") ^ dom.endswith("*")):
                yield (vpath + ("domains", d), f"invalid domain '{dom}': a wildcard is '*', "
                       "'*.suffix' or 'prefix*'")
        yield from _check_per_route_users(vh.typed_per_filter_config, vpath)
        for r, route in enumerate(vh.routes):
            rpath = vpath + ("routes", r)
            yield from _check_per_route_users(route.typed_per_filter_config, rpath)
            if route.route and route.route.cluster and route.route.cluster not in clusters:
                yield (rpath + ("route", "cluster"),
                       f"route: unknown cluster '{route.route.cluster}'")
            for k, mp in enumerate(route.route.request_mirror_policies if route.route else []):
                if mp.cluster not in clusters:
                    yield (rpath + ("route", "request_mirror_policies", k, "cluster"),
                           f"route: unknown cluster '{mp.cluster}'")
            wc = route.route.weighted_clusters if route.route else None
            for w, cw in enumerate(wc.clusters if wc else []):
                if cw.name not in clusters:
                    yield (rpath + ("route", "weighted_clusters", "clusters", w, "name"),
                           f"route: unknown cluster '{cw.name}'")
            if route.match.safe_regex:
                yield from _check_regex(route.match.safe_regex.regex,
                                        rpath + ("match", "safe_regex", "regex"))
            for h, hm in enumerate(route.match.headers):
                rx = hm.safe_regex_match or (hm.string_match and hm.string_match.safe_regex)
                if rx:
                    yield from _check_regex(rx.regex, rpath + ("match", "headers", h))
            if route.direct_response and route.direct_response.body:
                try:
                    read(route.direct_response.body)
                except DataSourceError as e:
                    yield (rpath + ("direct_response", "body"), str(e))


def _check_access_logs(logs: list[AccessLog], base: Path) -> Iterator[Problem]:
    for i, log in enumerate(logs):
        where = base + ("access_log", i, "typed_config")
        if log.typed_config.kind == "file":
            yield from _check_writable(log.typed_config.path, where + ("path",))
        template = log.typed_config.template
        if template is not None:
            try:
                compile_template(template)
            except ValueError as e:
                yield (where, str(e))

def _check_writable(path: str, where: Path) -> Iterator[Problem]:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            yield (where, f"cannot write to '{path}'")
    elif not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        yield (where, f"cannot create '{path}': directory '{parent}' is missing or read-only")
