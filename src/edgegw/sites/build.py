"""The sites file expanded to Envoy's bootstrap: plain data, each part remembering the line of
the sites file it came from, so that a problem found later points at that line.

Home-lab defaults, each a plain Envoy setting in the expansion:
- port 80 redirects to HTTPS, except ACME HTTP-01 challenges, answered from the webroot
  (edgegw-only route metadata; Envoy answers 404 there);
- WebSocket upgrades on; no route timeout (uploads and long streams), the stream idle
  timeout (5 min, a site's ``idle_timeout``) instead; request headers within 10 s;
- the client's address passed on (``use_remote_address``); admin on loopback;
- one TLS filter chain per site, its certificate found in the certificate directory, which is
  also the chain's drop-in directory (edgegw-only metadata), so renewals are served at once;
- strict SNI/Host (edgegw-only metadata), and a request for another site on a reused
  connection gets 421 so that the browser opens one for it;
- passive health on every upstream (outlier detection: five failures in a row, connect
  failures included, take a host out for 30 s, so that it shows red);
- a request log line per request on stdout (``access_log``).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.model import base as t
from ..tls.cert_dir import candidates, on_disk
from .inputs import ca_problem, certificate_problem, has_bcrypt, users_problem
from .model import (
    SECURITY_HEADERS,
    STARTING_PAGE,
    ControlPlane,
    Oidc,
    Site,
    SitesFile,
    Upstream,
    Url,
)

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
CONTROL_PLANE = "xds_control_plane"
GEO_COUNTRY = "x-geo-country"
"""The request header the geoip filter writes a client's country to (backends see it too)."""
"""The cluster the sites file's control plane is reached by."""
BCRYPT_NOTE = ("# bcrypt users are edgegw's (Envoy takes {SHA} alone): edgegw reads every user "
               "from the filter chain's metadata edgegw.basic_auth_users\n")
Path = tuple[str | int, ...]
LOGIN_CALLBACK = "/oauth2/callback"
LOGIN_SIGN_OUT = "/oauth2/sign_out"
HMAC_FILE = os.path.join(".oidc", "hmac-secret")
"""Where, in the certificate directory, the key that signs login cookies is made and kept
(every worker and every reload use the one there)."""


ACCESS_LOG = ('[%START_TIME(%Y-%m-%dT%H:%M:%S%z)%] {site} %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% '
              '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
              '%DURATION%ms %UPSTREAM_HOST% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% '
              '%UPSTREAM_TRANSPORT_FAILURE_REASON%\n')
"""What the sites file logs of each request (``-`` for what a request does not have)."""
ACCESS_LOG_JSON = {
    "time": "%START_TIME%", "site": "{site}", "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%", "status": "%RESPONSE_CODE%", "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%", "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%", "failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%"}
PASSIVE_HEALTH = {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s",
                  "max_ejection_percent": 100}
"""Envoy's outlier detection as a home lab wants it: a lone backend may be taken out too
(Envoy's 10 % default would never eject it), so that a dead one shows red."""

EDGE_HTTP2 = {"max_concurrent_streams": 100, "initial_stream_window_size": 65536,
              "initial_connection_window_size": 1048576}
"""Envoy's advice for an edge facing the Internet (browsers open far fewer streams; a client
posting to a slow backend parks at most 64 KiB per stream and 1 MiB per connection here)."""


def cluster_name(site: str, suffix: str = "") -> str:
    base = site.replace("*.", "wildcard.").replace(".", "_").replace("-", "_")
    return base + (f"_{suffix}" if suffix else "")


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _typed(type_url: str, **fields: Any) -> dict[str, Any]:
    return {"@type": type_url, **fields}


def _covers(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower(), name.lower()
    if pattern == name:
        return True
    return pattern.startswith("*.") and name.endswith(pattern[1:]) \
        and "." not in name[: -len(pattern) + 1]


@dataclass
class Expansion:
    """The bootstrap, where each of its parts came from, and what the user should know."""

    bootstrap: dict[str, Any]
    origins: dict[Path, str] = field(default_factory=dict)
    names: dict[Path, str] = field(default_factory=dict)
    """How a generated path is shown in errors: as the sites file's field it came from."""
    notes: list[str] = field(default_factory=list)
    """Sites served without TLS yet (no certificate), sites left out, and such."""
    left_out: list[dict[str, str]] = field(default_factory=list)
    """Sites left out for their broken files: ``site``, ``where`` and ``why``."""
    watch: list[str] = field(default_factory=list)
    """Files of the sites left out: a change to one loads the config again."""
    waiting: list[str] = field(default_factory=list)
    """Listeners the sites file asks for that cannot be bound yet (/ready says so)."""


class Builder:
    def __init__(self, sites: SitesFile, where: Callable[[Path], str]) -> None:
        self.sites = sites
        self.where = where
        """The sites file's line of a path in it (``("sites", name, "ca")``)."""
        self.out = Expansion({})
        self.clusters: list[dict[str, Any]] = []
        self.chains: list[dict[str, Any]] = []
        self.certs = on_disk(sites.certificates)
        self.login_clusters: dict[tuple[str, str, int], str] = {}
        self.secrets: list[dict[str, Any]] = []

    def build(self) -> Expansion:
        s = self.sites
        boot: dict[str, Any] = {
            "node": {"id": "edgegw", "cluster": "edgegw"},
            "admin": {"address": _socket(*s.admin)},
            "static_resources": {"listeners": [], "clusters": self.clusters},
        }
        if any(site.login for site in s.sites.values()):
            boot["static_resources"]["secrets"] = self.secrets
        for name, site in s.sites.items():
            if site.passthrough:
                self._passthrough(name, site)
            else:
                self._site(name, site)
        if s.status is not None:
            host, port = s.admin
            page = Site(upstream=[Url("http", "127.0.0.1" if host in ("0.0.0.0", "::") else host,
                                      port, "")], allow=s.status.allow, auth=s.status.auth)
            self._site(s.status.name, page, status=True)
        listeners = boot["static_resources"]["listeners"]
        if self.chains:
            listeners.append({
                "name": "https", "address": _socket(*s.listen.https),
                "listener_filters": [*self._proxy_protocol(),
                                     {"name": "envoy.filters.listener.tls_inspector",
                                      "typed_config": _typed(t.TLS_INSPECTOR_TYPE)}],
                "filter_chains": self.chains})
            for i, chain in enumerate(self.chains):
                self.out.origins[("static_resources", "listeners", 0, "filter_chains", i)] = \
                    chain.pop("_origin")
        else:
            host, port = s.listen.https
            self.out.waiting.append(f"HTTPS ({host}:{port}): no site has a usable certificate "
                                    "yet")
        if s.listen.http is not None:
            listeners.append(self._redirect())
            if s.acme is not None:
                self.out.origins[("static_resources", "listeners", len(listeners) - 1,
                                  "metadata")] = self.where(("acme",))
        if s.crowdsec is not None:
            for i, listener in enumerate(listeners):  # (the HTTPS and the port-80 listener)
                own = listener.setdefault("metadata", {}).setdefault(
                    "filter_metadata", {}).setdefault("edgegw", {})
                own["crowdsec"] = {"url": s.crowdsec.url,
                                   "api_key_file": s.crowdsec.api_key_file,
                                   "poll_interval": s.crowdsec.poll_interval}
                self.out.origins.setdefault(("static_resources", "listeners", i, "metadata"),
                                            self.where(("crowdsec",)))
        if s.control_plane is not None:
            self._control_plane(boot, s.control_plane)
        for i, c in enumerate(self.clusters):
            self.out.origins[("static_resources", "clusters", i)] = c.pop("_origin")
        self.out.bootstrap = boot
        return self.out

    # --- HTTPS sites ------------------------------------------------------------------------

    def _certificate(self, name: str) -> tuple[str, str] | None:
        for chain, key, _, names in self.certs:
            if any(_covers(n, name) for n in names):
                return chain, key
        return None

    def _site(self, name: str, site: Site, status: bool = False) -> None:
        found = self._certificate(name)
        if found is None:
            named = candidates(self.sites.certificates).get(name)
            if named is not None:  # its files are there, and broken (or for other names)
                self._leave_out(name, certificate_problem(*named) or (
                    f"the certificate {named[0]} is not for {name}"), named)
                return
            how = ("ACME is obtaining one" if self.acme_names(name) else
                   "NAME.crt + NAME.key, NAME.pem, or certbot's NAME/fullchain.pem + privkey.pem")
            self.out.notes.append(
                f"site {name} ({self._where(name)}): no certificate for it in "
                f"{self.sites.certificates} yet ({how}); it is served once one is there")
            return
        chain, key = found
        problem = certificate_problem(chain, key)
        if problem is not None:
            self._leave_out(name, problem, found)
            return
        problems = self._file_problems(site)
        if problems:
            self._leave_out(name, problems[0][0], tuple(path for _, path in problems))
            return
        tls = _typed(t.DOWNSTREAM_TLS_TYPE, common_tls_context={
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": chain},
                                  "private_key": {"filename": key}}]})
        self.chains.append({
            "filter_chain_match": {"server_names": [name]},
            "metadata": {"filter_metadata": {"edgegw": {
                "certificate_directory": self.sites.certificates, "strict_sni_host": True,
                "websocket_close_on_idle": True, **self._bcrypt_users(site)}}},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            "filters": [self._hcm(name, site, status)],
            "_origin": self._where(name)})
        if site.auth is not None and site.auth.users_file:
            # Watched: a bcrypt hash added to it (or the last one gone) changes the expansion.
            self.out.watch.append(site.auth.users_file)

    def _where(self, name: str) -> str:
        """The line of a site (or of ``status:``, for the status page's name)."""
        status = self.sites.status
        return self.where(("status",) if status is not None and status.name == name
                          else ("sites", name))

    def _file_problems(self, site: Site) -> list[tuple[str, str]]:
        """The site's other files that are broken (its upstreams' CAs, its users file)."""
        out = []
        for to in (site, *site.paths.values()):
            if to.ca:
                why = ca_problem(to.ca)
                if why is not None:
                    out.append((why, to.ca))
        if site.auth is not None and site.auth.users_file:
            why = users_problem(site.auth.users_file)
            if why is not None:
                out.append((why, site.auth.users_file))
        return out

    def _leave_out(self, name: str, why: str, files: tuple[str, ...]) -> None:
        """The site is not served (its files are broken); the others are."""
        where = self._where(name)
        self.out.left_out.append({"site": name, "where": where, "why": why})
        self.out.notes.append(f"site {name} ({where}) is left out: {why}; the other sites are "
                              "served, and this one is once its files are fixed")
        self.out.watch.extend(files)

    def _hcm(self, name: str, site: Site, status: bool = False) -> dict[str, Any]:
        routes = self._status_routes(name, site) if status else self._routes(name, site)
        vhost: dict[str, Any] = {"name": cluster_name(name), "domains": [name],
                                 "routes": routes}
        if site.request_headers:
            vhost["request_headers_to_add"] = [
                {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in site.request_headers.items()]
        if site.auth is not None and site.auth.forward is None:
            # The backend gets the user's name (x-remote-user), never the password.
            vhost["request_headers_to_remove"] = ["authorization"]
        if site.response_headers:
            vhost["response_headers_to_add"] = [
                {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in site.response_headers.items()]
        other = {"name": "other_sites", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 421, "body": {
                "inline_string": "Misdirected Request"}}}]}
        filters = [*self._access_filters(name, site), *self._security_headers(site),
                   *self._compressors(site), *self._backend_error_pages(site),
                   {"name": "envoy.filters.http.router", "typed_config": _typed(t.ROUTER_TYPE)}]
        return {"name": "envoy.filters.network.http_connection_manager",
                "typed_config": _typed(
                    t.HCM_TYPE, stat_prefix=cluster_name(name), use_remote_address=True,
                    **self._access_log(name),
                    request_headers_timeout="10s", stream_idle_timeout=site.idle_timeout,
                    upgrade_configs=[{"upgrade_type": "websocket"}],
                    http2_protocol_options=EDGE_HTTP2,
                    http_filters=filters, **self._error_pages(site),
                    route_config={"name": cluster_name(name), "ignore_port_in_host_matching": True,
                                  "virtual_hosts": [vhost, other]})}

    def _access_log(self, name: str) -> dict[str, Any]:
        """``access_log``: a line (or a JSON object) per request to stdout or a file."""
        how = self.sites.access_log
        if how == "off":
            return {}
        if how == "json":
            fmt: dict[str, Any] = {"json_format": {
                k: v.replace("{site}", name) for k, v in ACCESS_LOG_JSON.items()}}
        else:  # (text_format_source: Envoy deprecates text_format)
            fmt = {"text_format_source": {"inline_string": ACCESS_LOG.replace("{site}", name)}}
        if how in ("stdout", "json"):
            logger = {"name": "envoy.access_loggers.stdout",
                      "typed_config": _typed(t.STDOUT_LOG_TYPE, log_format=fmt)}
        else:
            logger = {"name": "envoy.access_loggers.file",
                      "typed_config": _typed(t.FILE_LOG_TYPE, path=how, log_format=fmt)}
        return {"access_log": [logger]}

    def _status_routes(self, name: str, site: Site) -> list[dict[str, Any]]:
        """GET /status and /status.json go to the admin port; nothing else does (404), so
        no admin command can be reached through the site."""
        cname = cluster_name(name, "admin")
        self._cluster(cname, site, ("status",), name)
        get = [{"name": ":method", "string_match": {"exact": "GET"}}]
        return [*({"match": {"path": path, "headers": get},
                   "route": {"cluster": cname, "timeout": "10s"}}
                  for path in ("/status", "/status.json")),
                {"match": {"path": "/", "headers": get},
                 "redirect": {"path_redirect": "/status"}},
                {"match": {"prefix": "/"}, "direct_response": {
                    "status": 404, "body": {"inline_string": "Not Found"}}}]

    def _routes(self, name: str, site: Site) -> list[dict[str, Any]]:
        routes = []
        for i, (prefix, to) in enumerate(sorted(site.paths.items(), key=lambda p: -len(p[0]))):
            cname = cluster_name(name, f"path{i}")
            self._cluster(cname, to, ("sites", name, "paths", prefix))
            action: dict[str, Any] = {"cluster": cname, "timeout": "0s"}
            if to.strip_prefix:
                action["prefix_rewrite"] = "/"
            routes.append({"match": {"prefix": prefix}, "route": action})
        self._cluster(cluster_name(name), site, ("sites", name))
        routes.append({"match": {"prefix": "/"},
                       "route": {"cluster": cluster_name(name), "timeout": "0s"}})
        return routes

    def _compressors(self, site: Site) -> list[dict[str, Any]]:
        """compress: a compressor filter per library, zstd first (what ``*`` gets, and what
        wins a tie: browsers send ``gzip, deflate, br, zstd``, all at q=1)."""
        if not (site.compress if site.compress is not None else self.sites.compress):
            return []
        return [{"name": f"envoy.filters.http.compressor.{lib}", "typed_config": _typed(
            t.COMPRESSOR_TYPE, compressor_library={"name": lib, "typed_config": _typed(url)},
            **({"choose_first": True} if lib == "zstd" else {}))}
            for lib, url in (("zstd", t.ZSTD_TYPE), ("brotli", t.BROTLI_TYPE),
                             ("gzip", t.GZIP_TYPE))]

    def _pages(self, site: Site) -> list[tuple[int, dict[str, str]]]:
        """error_pages: each status code and its page as a DataSource."""
        pages = {**self.sites.error_pages, **site.error_pages}
        return [(code, {"inline_string": STARTING_PAGE} if page == "starting"
                 else {"filename": page}) for code, page in sorted(pages.items())]

    def _error_pages(self, site: Site) -> dict[str, Any]:
        """error_pages for the gateway's own replies: local_reply_config."""
        mappers = [{"filter": {"status_code_filter": {"comparison": {
                        "op": "EQ", "value": {"default_value": code,
                                              "runtime_key": f"error_page_{code}"}}}},
                    "body": body, "body_format_override": PAGE_FORMAT}
                   for code, body in self._pages(site)]
        return {"local_reply_config": {"mappers": mappers}} if mappers else {}

    def _backend_error_pages(self, site: Site) -> list[dict[str, Any]]:
        """error_pages for a backend's own replies: a custom_response filter."""
        rules = [{"predicate": {"single_predicate": {
                      "input": {"name": "status", "typed_config": _typed(
                          t.STATUS_CODE_INPUT_TYPE)},
                      "value_match": {"exact": str(code)}}},
                  "on_match": {"action": {"name": f"page_{code}", "typed_config": _typed(
                      t.LOCAL_RESPONSE_POLICY_TYPE, body=body, body_format=PAGE_FORMAT)}}}
                 for code, body in self._pages(site)]
        if not rules:
            return []
        return [{"name": "envoy.filters.http.custom_response", "typed_config": _typed(
            t.CUSTOM_RESPONSE_TYPE, custom_response_matcher={"matcher_list": {
                "matchers": rules}})}]

    def _security_headers(self, site: Site) -> list[dict[str, Any]]:
        """security_headers: a header_mutation filter adding each one a response lacks."""
        wanted = site.security_headers if site.security_headers is not None \
            else self.sites.security_headers
        if not wanted:
            return []
        headers = {**SECURITY_HEADERS, **({k.lower(): v for k, v in wanted.items()}
                                          if isinstance(wanted, dict) else {})}
        mutations = [{"append": {"header": {"key": k, "value": v},
                                 "append_action": "ADD_IF_ABSENT"}}
                     for k, v in headers.items() if v is not None]
        return [{"name": "envoy.filters.http.header_mutation", "typed_config": _typed(
            t.HEADER_MUTATION_TYPE, mutations={"response_mutations": mutations})}]

    def _countries(self, site: Site) -> list[dict[str, Any]]:
        """countries: the client's own x-geo-country dropped (a country not found would
        leave it, as in Envoy), the geoip filter writing it, and RBAC on it."""
        countries = site.countries or self.sites.countries
        geo = self.sites.geoip
        if countries is None or geo is None:
            return []
        db = {"country_db_path": geo.country_db} if geo.country_db else \
            {"city_db_path": geo.city_db}
        action, listed = ("ALLOW", countries.allow) if countries.allow else \
            ("DENY", countries.deny)
        return [
            {"name": "envoy.filters.http.header_mutation.countries", "typed_config": _typed(
                t.HEADER_MUTATION_TYPE, mutations={"request_mutations": [
                    {"remove": GEO_COUNTRY}]})},
            {"name": "envoy.filters.http.geoip", "typed_config": _typed(
                t.GEOIP_TYPE, provider={"name": "envoy.geoip_providers.maxmind",
                                        "typed_config": _typed(t.MAXMIND_TYPE, **db,
                                            common_provider_config={"geo_headers_to_add": {
                                                "country": GEO_COUNTRY}})})},
            {"name": "envoy.filters.http.rbac.countries", "typed_config": _typed(
                t.RBAC_TYPE, rules={"action": action, "policies": {"countries": {
                    "permissions": [{"any": True}],
                    "principals": [{"or_ids": {"ids": [
                        {"header": {"name": GEO_COUNTRY, "string_match": {"exact": c}}}
                        for c in listed]}}]}}})}]

    def _access_filters(self, name: str, site: Site) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._countries(site)
        if site.allow:
            out.append({"name": "envoy.filters.http.rbac",
                        "typed_config": _typed(t.RBAC_TYPE, rules=self._allow(site))})
        if site.login is not None:
            out.extend(self._login(site))
        auth = site.auth
        if auth is None:
            return out
        if auth.forward is not None:
            cname = cluster_name(name, "auth")
            self._cluster(cname, Upstream(upstream=[auth.forward]), ("sites", name, "auth"))
            headers = [{"exact": h.lower()} for h in auth.forward_headers]
            out.append({"name": "envoy.filters.http.ext_authz", "typed_config": _typed(
                t.EXT_AUTHZ_TYPE, transport_api_version="V3", http_service={
                    "server_uri": {"uri": str(auth.forward), "cluster": cname,
                                   "timeout": "5s"},
                    "path_prefix": auth.forward_path,
                    "authorization_request": {
                        "allowed_headers": {"patterns": [
                            {"exact": h} for h in ("cookie", "authorization",
                                                   "proxy-authorization", "accept",
                                                   "x-forwarded-for", "x-forwarded-proto")]},
                        "headers_to_add": [{"key": "x-forwarded-host", "value": name}]},
                    "authorization_response": {
                        "allowed_upstream_headers": {"patterns": headers},
                        "allowed_client_headers_on_success": {"patterns": [
                            {"exact": "set-cookie"}]}}})})
            return out
        if self._bcrypt_users(site):  # Envoy gets the {SHA} users alone (or a comment)
            users = {"inline_string": BCRYPT_NOTE + "".join(
                f"{u}:{h}\n" for u, h in (auth.users or {}).items() if h.startswith("{SHA}"))}
        elif auth.users is not None:
            users = {"inline_string": "".join(f"{u}:{h}\n" for u, h in auth.users.items())}
        else:
            users = {"filename": str(auth.users_file)}
        out.append({"name": "envoy.filters.http.basic_auth", "typed_config": _typed(
            t.BASIC_AUTH_TYPE, users=users, forward_username_header="x-remote-user")})
        return out

    def _login(self, site: Site) -> list[dict[str, Any]]:
        """login: oidc: the client's own claim headers dropped, the OAuth2 filter (the login,
        its session in cookies), jwt_authn on its ID token (claims to headers, the payload
        for RBAC), and RBAC on the groups when ``allow_groups`` asks."""
        assert self.sites.login is not None
        oidc = self.sites.login.oidc
        found = oidc.found
        if not self.secrets:
            self.secrets.extend([
                {"name": "oidc-client-secret",
                 "generic_secret": {"secret": {"filename": oidc.client_secret_file}}},
                {"name": "oidc-hmac", "generic_secret": {"secret": {
                    "filename": oidc.hmac_secret_file or self._hmac_file()}}}])
        scopes = ["openid", *(sc for sc in oidc.scopes if sc != "openid")]
        oauth2: dict[str, Any] = {
            "token_endpoint": {"uri": found.token_endpoint, "timeout": "10s",
                               "cluster": self._login_cluster(oidc, found.token_endpoint)},
            "authorization_endpoint": found.authorization_endpoint,
            "redirect_uri": "https://%REQ(:authority)%" + LOGIN_CALLBACK,
            "redirect_path_matcher": {"path": {"exact": LOGIN_CALLBACK}},
            "signout_path": {"path": {"exact": LOGIN_SIGN_OUT}},
            "credentials": {"client_id": oidc.client_id,
                            "token_secret": {"name": "oidc-client-secret"},
                            "hmac_secret": {"name": "oidc-hmac"}},
            "auth_scopes": scopes,
            "deny_redirect_matcher": [{"name": "x-requested-with",
                                       "string_match": {"exact": "XMLHttpRequest"}}]}
        if found.end_session_endpoint:
            oauth2["end_session_endpoint"] = found.end_session_endpoint
        out: list[dict[str, Any]] = []
        if oidc.claims:
            out.append({"name": "envoy.filters.http.header_mutation.login", "typed_config": _typed(
                t.HEADER_MUTATION_TYPE, mutations={"request_mutations": [
                    {"remove": h.lower()} for h in oidc.claims]})})
        out.append({"name": "envoy.filters.http.oauth2", "typed_config": _typed(
            t.OAUTH2_TYPE, config=oauth2)})
        out.append({"name": "envoy.filters.http.jwt_authn", "typed_config": _typed(
            t.JWT_AUTHN_TYPE, providers={"oidc": {
                "issuer": found.issuer, "audiences": [oidc.client_id],
                "remote_jwks": {"http_uri": {
                    "uri": found.jwks_uri, "timeout": "10s",
                    "cluster": self._login_cluster(oidc, found.jwks_uri)},
                    "cache_duration": "600s"},
                "from_cookies": ["IdToken"], "forward": True, "payload_in_metadata": "oidc",
                "claim_to_headers": [{"header_name": h.lower(), "claim_name": c}
                                     for h, c in oidc.claims.items()]}},
            rules=[{"match": {"prefix": "/"}, "requires": {"provider_name": "oidc"}}],
            )})
        if site.allow_groups:
            out.append({"name": "envoy.filters.http.rbac.groups", "typed_config": _typed(
                t.RBAC_TYPE, rules={"action": "ALLOW", "policies": {"groups": {
                    "permissions": [{"any": True}],
                    "principals": [{"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "oidc"}, {"key": "groups"}],
                        "value": {"list_match": {"one_of": {"string_match": {"exact": g}}}}}}
                        for g in site.allow_groups]}}})})
        return out

    def _login_cluster(self, oidc: Oidc, url: str) -> str:
        """The cluster an endpoint of the provider is reached by (one per host)."""
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        if key not in self.login_clusters:
            cname = "login_oidc" if not self.login_clusters else \
                f"login_oidc_{len(self.login_clusters) + 1}"
            self.login_clusters[key] = cname
            self._cluster(cname, Upstream(upstream=[Url(scheme, host, port, "")], ca=oidc.ca),
                          ("login", "oidc"), site="login")
        return self.login_clusters[key]

    def _hmac_file(self) -> str:
        """The login cookies' key, made once (32 random bytes, hex) and kept in the
        certificate directory's private folder."""
        path = os.path.join(self.sites.certificates, HMAC_FILE)
        if os.path.exists(path):
            return path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())
        try:
            os.link(tmp, path)  # (whole, and only once: another worker's may be there first)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return path

    @staticmethod
    def _bcrypt_users(site: Site) -> dict[str, Any]:
        """The chain metadata that carries a site's users when some are bcrypt hashes, which
        Envoy's basic_auth refuses: edgegw reads them all from there (edgegw-only)."""
        auth = site.auth
        if auth is None:
            return {}
        if auth.users is not None and any(not h.startswith("{SHA}")
                                          for h in auth.users.values()):
            return {"basic_auth_users": {"inline_string": "".join(
                f"{u}:{h}\n" for u, h in auth.users.items())}}
        if auth.users_file is not None and has_bcrypt(auth.users_file):
            return {"basic_auth_users": {"filename": auth.users_file}}
        return {}

    @staticmethod
    def _allow(site: Site) -> dict[str, Any]:
        return {"action": "ALLOW", "policies": {"allow": {
            "permissions": [{"any": True}],
            "principals": [{"remote_ip": {"address_prefix": str(n.network_address),
                                          "prefix_len": n.prefixlen}} for n in site.allow]}}}

    # --- clusters ---------------------------------------------------------------------------

    def _cluster(self, cname: str, to: Upstream, at: Path, site: str | None = None) -> None:
        """A cluster for ``to``, written at ``at`` in the sites file (its site's part)."""
        ups: list[Url] = to.upstream
        names = any(not u.is_ip for u in ups)
        cluster: dict[str, Any] = {
            "name": cname, "type": "STRICT_DNS" if names else "STATIC",
            "connect_timeout": "5s", "outlier_detection": PASSIVE_HEALTH,
            "metadata": {"filter_metadata": {"edgegw": {"site": site or str(at[1])}}},
            "load_assignment": {"cluster_name": cname, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket(u.host, u.port)}} for u in ups]}]},
            "_origin": self.where(at)}
        if len(ups) > 1:
            check: dict[str, Any] = {"timeout": "3s", "interval": "10s",
                                     "unhealthy_threshold": 2, "healthy_threshold": 1}
            health_path = getattr(to, "health_path", None)
            if health_path:
                check["http_health_check"] = {"path": health_path}
            else:
                check["tcp_health_check"] = {}
            cluster["health_checks"] = [check]
        if ups[0].scheme == "https":
            cluster["transport_socket"] = self._upstream_tls(to, ups[0])
            if to.ca:
                ca = ("static_resources", "clusters", len(self.clusters), "transport_socket",
                      "typed_config", "common_tls_context", "validation_context", "trusted_ca")
                self.out.origins[ca] = self.where((*at, "ca"))
                self.out.names[ca] = ".".join(map(str, (*at, "ca")))
        self.clusters.append(cluster)

    def _control_plane(self, boot: dict[str, Any], cp: ControlPlane) -> None:
        """ADS to the control plane for listeners and clusters, over a static cluster that
        speaks HTTP/2 (and TLS, with a client certificate for mTLS)."""
        boot["node"] = {"id": cp.node, "cluster": "edgegw"}
        ads = {"ads": {}, "resource_api_version": "V3"}
        boot["dynamic_resources"] = {
            "ads_config": {"api_type": "DELTA_GRPC" if cp.protocol == "delta" else "GRPC",
                           "transport_api_version": "V3",
                           "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": CONTROL_PLANE}}]},
            "lds_config": ads, "cds_config": ads}
        to = Upstream(upstream=[cp.url], sni=cp.sni, ca=cp.ca,
                      insecure_skip_verify=cp.insecure_skip_verify)
        self._cluster(CONTROL_PLANE, to, ("control_plane",), site="control_plane")
        cluster = self.clusters[-1]
        cluster.pop("outlier_detection")
        cluster["typed_extension_protocol_options"] = {
            t.HTTP_OPTIONS_TYPE.rsplit("/", 1)[-1]: _typed(
                t.HTTP_OPTIONS_TYPE, explicit_http_config={"http2_protocol_options": {}})}
        if cp.client_certificate is not None:
            cluster["transport_socket"]["typed_config"]["common_tls_context"][
                "tls_certificates"] = [{"certificate_chain": {"filename": cp.client_certificate},
                                        "private_key": {"filename": cp.client_key}}]

    @staticmethod
    def _upstream_tls(to: Upstream, url: Url) -> dict[str, Any]:
        sni = to.sni or (None if url.is_ip else url.host)
        tls: dict[str, Any] = {"common_tls_context": {}}
        if sni:
            tls["sni"] = sni
        if not to.insecure_skip_verify:
            san_type, expected = ("DNS", sni) if sni else ("IP_ADDRESS", url.host)
            tls["common_tls_context"]["validation_context"] = {
                "trusted_ca": {"filename": to.ca or SYSTEM_CA},
                "match_typed_subject_alt_names": [
                    {"san_type": san_type, "matcher": {"exact": expected}}]}
        return {"name": "envoy.transport_sockets.tls",
                "typed_config": _typed(t.UPSTREAM_TLS_TYPE, **tls)}

    # --- passthrough and port 80 ------------------------------------------------------------

    def _passthrough(self, name: str, site: Site) -> None:
        cname = cluster_name(name)
        plain = Upstream(upstream=[Url("tcp", u.host, u.port, "") for u in site.upstream])
        self._cluster(cname, plain, ("sites", name))
        filters: list[dict[str, Any]] = []
        if site.allow:
            filters.append({"name": "envoy.filters.network.rbac", "typed_config": _typed(
                t.NETWORK_RBAC_TYPE, stat_prefix=cname, rules=self._allow(site))})
        filters.append({"name": "envoy.filters.network.tcp_proxy", "typed_config": _typed(
            t.TCP_PROXY_TYPE, stat_prefix=cname, cluster=cname)})
        self.chains.append({"filter_chain_match": {"server_names": [name]},
                            "filters": filters, "_origin": self.where(("sites", name))})

    def _proxy_protocol(self) -> list[dict[str, Any]]:
        if not self.sites.listen.proxy_protocol:
            return []
        return [{"name": "envoy.filters.listener.proxy_protocol",
                 "typed_config": _typed(t.PROXY_PROTOCOL_TYPE)}]

    def acme_names(self, name: str | None = None) -> list[str]:
        """The names built-in ACME obtains certificates for: HTTP-01 cannot do wildcards;
        under DNS-01, a name a wildcard of the sites covers is served by the wildcard's."""
        acme = self.sites.acme
        if acme is None:
            return []
        names = [n for n, s in self.sites.sites.items() if not s.passthrough]
        if self.sites.status is not None:
            names.append(self.sites.status.name)
        wild = [n for n in names if n.startswith("*.")]
        names = [n for n in names if not n.startswith("*.")] if acme.dns is None else \
            [n for n in names if n in wild or not any(_covers(w, n) for w in wild)]
        return [n for n in names if n == name] if name is not None else names

    def _redirect(self) -> dict[str, Any]:
        https_port = self.sites.listen.https[1]
        redirect: dict[str, Any] = {"https_redirect": True}
        if https_port != 443:
            redirect["port_redirect"] = https_port
        assert self.sites.listen.http is not None
        listener: dict[str, Any] = {"name": "http", "address": _socket(*self.sites.listen.http)}
        if self.sites.listen.proxy_protocol:
            listener["listener_filters"] = self._proxy_protocol()
        acme = self.sites.acme
        if acme is not None:
            settings: dict[str, Any] = {"email": acme.email, "directory": acme.directory,
                        "names": self.acme_names(), "certificates": self.sites.certificates,
                        "webroot": self.sites.webroot, "renew_interval": acme.renew_interval}
            if acme.ca:
                settings["ca"] = acme.ca
            if acme.profile:
                settings["profile"] = acme.profile
            if acme.eab is not None:
                settings["eab"] = acme.eab.model_dump()
            if acme.dns is not None:
                dns = acme.dns.model_dump(exclude_defaults=True)
                if "propagation_timeout" in dns:
                    dns["propagation_timeout"] = f"{dns['propagation_timeout']:g}s"
                settings["dns"] = dns
            listener["metadata"] = {"filter_metadata": {"edgegw": {"acme": settings}}}
        return {**listener, "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": _typed(
                              t.HCM_TYPE, stat_prefix="http", request_headers_timeout="10s",
                              http_filters=[{"name": "envoy.filters.http.router",
                                             "typed_config": _typed(t.ROUTER_TYPE)}],
                              route_config={"virtual_hosts": [
                                  {"name": "to_https", "domains": ["*"], "routes": [
                                      {"match": {"prefix": "/.well-known/acme-challenge/"},
                                       "direct_response": {"status": 404},
                                       "metadata": {"filter_metadata": {"edgegw": {
                                           "webroot": self.sites.webroot}}}},
                                      {"match": {"prefix": "/"},
                                       "redirect": redirect}]}]})}]}]}


PAGE_FORMAT = {"text_format": "%LOCAL_REPLY_BODY%", "content_type": "text/html; charset=UTF-8"}
"""An error page goes out as it is, as HTML."""


def expand(sites: SitesFile, where: Callable[[Path], str]) -> Expansion:
    return Builder(sites, where).build()
