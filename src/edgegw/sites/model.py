"""The sites file (edgegw-only): a short description of a home lab's sites, checked field by
field before it is expanded to Envoy's bootstrap (sites/build.py).

```yaml
listen: {https: 0.0.0.0:443, http: 0.0.0.0:80}
admin: 127.0.0.1:9901
certificates: certs/
sites:
  a.example.com: http://192.168.1.20:80
  b.example.com: {upstream: https://192.168.1.21:443, sni: b.internal, ca: certs/lab-ca.pem}
```
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import maxminddb
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..config import model as m
from ..config.htpasswd import parse_users

_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}"
                   r"[a-z0-9])?$")
_URL = re.compile(r"^(?P<scheme>[a-z0-9]+)://(?P<host>\[[0-9a-fA-F:.]+\]|[^/:\[\]]+)"
                  r"(?::(?P<port>\d+))?(?P<path>/.*)?$")
SCHEMES = {"http": 80, "https": 443, "tcp": 0}


class SitesMsg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


@dataclass(frozen=True)
class Url:
    """An upstream: ``http://host:port``, ``https://host:port`` or ``tcp://host:port``."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_url(value: Any) -> Url:
    if isinstance(value, Url):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as http://192.168.1.20:8080, got {value!r}")
    m = _URL.match(value.strip())
    if not m or m["scheme"] not in SCHEMES:
        raise ValueError(f"'{value}' is not an upstream URL: write http://HOST:PORT, "
                         "https://HOST:PORT (the backend speaks TLS) or tcp://HOST:PORT "
                         "(passthrough)")
    scheme, host = m["scheme"], m["host"].strip("[]")
    port = int(m["port"]) if m["port"] else SCHEMES[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"'{value}': a port between 1 and 65535 is needed")
    path = m["path"] or ""
    if path not in ("", "/"):
        raise ValueError(f"'{value}': an upstream URL has no path; to send a path prefix "
                         "elsewhere, use the site's 'paths'")
    return Url(scheme, host, port, "")


UrlField = Annotated[Url, BeforeValidator(parse_url)]


def _upstreams(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


Upstreams = Annotated[list[UrlField], BeforeValidator(_upstreams), Field(min_length=1)]


def _cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not an address or range such as 192.168.0.0/16, "
                         "10.0.0.5 or fd00::/8") from None


Cidr = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_cidr)]


def _address(value: Any) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all addresses)."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' is not an address: write HOST:PORT, e.g. 0.0.0.0:443")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"'{text}': the gateway listens on an IP address, not a name") from None
    return host, int(port)


Address = Annotated[tuple[str, int], BeforeValidator(_address)]


class Listen(SitesMsg):
    https: Address = ("0.0.0.0", 443)
    http: Address | None = ("0.0.0.0", 80)
    """Plain HTTP: redirects to HTTPS (``null``: no port-80 listener)."""
    proxy_protocol: bool = False
    """Every connection comes through a balancer that sends the PROXY protocol (v1 or v2),
    which carries the client's address."""


class Auth(SitesMsg):
    """Who may use a site: basic users (htpasswd bcrypt or ``{SHA}`` hashes, inline or in a
    file) or a forward-auth service (Authelia, Authentik, oauth2-proxy)."""

    users: dict[str, str] | None = None
    users_file: str | None = None
    forward: UrlField | None = None
    forward_path: str = ""
    """The service's check path, e.g. /api/authz/ext-authz (Authelia) or
    /outpost.goauthentik.io/auth/envoy (Authentik); the request's path is appended."""
    forward_headers: list[str] = ["Remote-User", "Remote-Groups", "Remote-Name",
                                  "Remote-Email"]
    """What the service may set on the request for the site (and nobody else may)."""

    @model_validator(mode="after")
    def _one(self) -> Auth:
        given = [n for n in ("users", "users_file", "forward") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'users', 'users_file' or 'forward'")
        for user, hashed in (self.users or {}).items():
            try:
                parse_users(f"{user}:{hashed}", bcrypt=True)
            except ValueError:
                raise ValueError(f"user '{user}': the password must be an htpasswd bcrypt or "
                                 "{SHA} hash, e.g. from `htpasswd -nbB USER PASSWORD`") from None
        return self


class Upstream(SitesMsg):
    """Where requests go, and how the gateway trusts an https:// upstream."""

    upstream: Upstreams
    sni: str | None = None
    """The name sent to an https:// upstream (default: its host name)."""
    ca: str | None = None
    """The CA that signs the https:// upstream's certificate (default: the system's)."""
    insecure_skip_verify: bool = False
    """Take any certificate from the upstream (self-signed appliances)."""


class PathRoute(Upstream):
    """A path prefix of a site sent to another upstream."""

    strip_prefix: bool = False


def _short(value: Any) -> Any:
    if isinstance(value, str | list):
        return {"upstream": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected an upstream URL (http://192.168.1.20:80) or the site's "
                         f"fields (upstream:, sni:, allow: …), got {value!r}")
    return value


def _seconds(value: Any) -> Any:
    """``300s``, ``1h``, ``90m`` or a number of seconds, as Envoy's duration (``300s``)."""
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"'{text}' is not a duration: write 300s, 90m or 1h") from None
    if seconds < 0:
        raise ValueError(f"'{text}': a duration cannot be negative")
    return f"{seconds:g}s"


SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "SAMEORIGIN",
}
"""What ``security_headers: true`` adds to every response that lacks them (HSTS without
includeSubDomains: a subdomain may not speak HTTPS)."""

STARTING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Starting…</title><style>body{font:16px system-ui,sans-serif;margin:20vh auto;
max-width:32em;text-align:center;color:#333}</style></head>
<body><h1>This service is starting</h1>
<p>It is not answering yet. This page tries again every 5 seconds.</p></body></html>
"""
"""``error_pages: {503: starting}``: a page that reloads itself, with nothing from elsewhere."""


def _error_pages(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("error_pages maps status codes to HTML files, e.g. "
                         "{503: pages/starting.html}, or to 'starting' for the built-in page")
    for code, page in value.items():
        if not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"error_pages: {code!r} is not a status code from 400 to 599")
        if page != "starting" and not (isinstance(page, str) and os.path.isfile(page)):
            raise ValueError(f"error_pages: {page!r} is not a file (relative paths start "
                             f"where the gateway runs: {os.getcwd()}), nor 'starting'")
    return value


ErrorPages = Annotated[dict[int, str], BeforeValidator(_error_pages)]
"""Status code → an HTML file, or ``starting``: the page replies with that status get, the
gateway's own (no healthy backend, a refused connection, a timeout …) and the backend's."""

def _country(value: Any) -> Any:
    if not (isinstance(value, str) and len(value) == 2 and value.isalpha()):
        raise ValueError(f"{value!r} is not a country code (two letters, ISO 3166: DE, FR)")
    return value.upper()


class Countries(SitesMsg):
    """``{allow: [DE, FR]}``: only clients from these countries; ``{deny: [...]}``: all but
    these. The country is the client's address looked up in ``geoip``'s database; an
    address it does not know is refused by ``allow`` and let through by ``deny``."""

    allow: list[Annotated[str, BeforeValidator(_country)]] = []
    deny: list[Annotated[str, BeforeValidator(_country)]] = []

    @model_validator(mode="after")
    def _one(self) -> Countries:
        if bool(self.allow) == bool(self.deny):
            raise ValueError("countries takes 'allow' or 'deny', with at least one country")
        return self


def _no_file(value: str, then: str) -> ValueError:
    return ValueError(f"'{value}' is not a file (relative paths start where the gateway "
                      f"runs: {os.getcwd()}){then}")


def _database(value: Any) -> Any:
    if isinstance(value, str) and not os.path.isfile(value):
        raise _no_file(value, "; GeoLite2-Country.mmdb comes free from MaxMind")
    if isinstance(value, str):
        try:
            maxminddb.open_database(value).close()
        except (OSError, ValueError, maxminddb.InvalidDatabaseError):
            raise ValueError(f"'{value}' is not a MaxMind database (a .mmdb file such as "
                             "GeoLite2-Country.mmdb)") from None
    return value


def _key_file(value: Any) -> Any:
    if isinstance(value, str) and not os.path.isfile(value):
        raise _no_file(value, ": write the key `cscli bouncers add edgegw` printed into it")
    return value


class CrowdSecSettings(SitesMsg):
    """A CrowdSec bouncer (edgegw-only): the Local API's bans refuse connections before TLS,
    and every decision refuses its client's requests with a 403 page."""

    url: str = Field(pattern=r"^https?://")
    """The Local API, e.g. ``http://127.0.0.1:8080``."""
    api_key_file: Annotated[str, BeforeValidator(_key_file)]
    """The file holding the key ``cscli bouncers add edgegw`` printed."""
    poll_interval: Annotated[str, BeforeValidator(_seconds)] = "10s"


class GeoipSettings(SitesMsg):
    """The MaxMind database (GeoIP2 or GeoLite2, Country or City) that ``countries`` reads;
    a new file renamed over it is read at once."""

    country_db: Annotated[str, BeforeValidator(_database)] | None = None
    city_db: Annotated[str, BeforeValidator(_database)] | None = None

    @model_validator(mode="after")
    def _one(self) -> GeoipSettings:
        if (self.country_db is None) == (self.city_db is None):
            raise ValueError("geoip takes 'country_db' or 'city_db' (the path of a .mmdb file)")
        return self


def _secret_file(value: Any) -> Any:
    if isinstance(value, str) and not os.path.isfile(value):
        raise _no_file(value, ": write the secret into it")
    if isinstance(value, str):
        with open(value, "rb") as f:
            secret = f.read()
        if not secret.strip() or secret != secret.strip():
            raise ValueError(f"'{value}' must hold the secret alone, without a line break "
                             f"or spaces around it (they would be part of it): "
                             f"printf %s 'SECRET' > {value}")
    return value


@dataclass(frozen=True)
class Discovered:
    """What an OpenID provider's discovery document says (``/.well-known/openid-
    configuration``)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str


def discover(issuer: str, ca: str | None, timeout: float = 5.0) -> Discovered:
    """Reads the provider's discovery document; ValueError naming the issuer and what went
    wrong when it cannot be read or lacks an endpoint."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    ctx = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(url, timeout=timeout) as r:
            doc = json.loads(r.read(1 << 20))
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise ValueError(f"the OpenID provider {issuer} could not be asked for its "
                         f"endpoints ({url}): {why}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{url} is not an OpenID discovery document")
    missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
               if not isinstance(doc.get(k), str)]
    if missing:
        raise ValueError(f"{url} lacks {', '.join(missing)}")
    end = doc.get("end_session_endpoint")
    return Discovered(doc["issuer"], doc["authorization_endpoint"], doc["token_endpoint"],
                      doc["jwks_uri"], end if isinstance(end, str) else "")


class Oidc(SitesMsg):
    """A login at an OpenID provider (Authentik, Keycloak, Pocket ID, Zitadel, Google):
    its endpoints come from its discovery document, read at every load."""

    issuer: str = Field(pattern=r"^https?://")
    client_id: str = Field(min_length=1)
    client_secret_file: Annotated[str, BeforeValidator(_secret_file)]
    scopes: list[str] = ["openid", "email", "profile"]
    """What to ask the provider for (``openid`` is always asked); add ``groups`` where the
    provider has such a scope."""
    claims: dict[str, str] = {"Remote-User": "preferred_username", "Remote-Email": "email"}
    """Request headers the backend gets, from the ID token's claims (a client's own header
    of that name never reaches it)."""
    ca: str | None = None
    """A CA file to trust the provider's certificate with (else the system's)."""
    hmac_secret_file: Annotated[str, BeforeValidator(_secret_file)] | None = None
    """The key that signs the login cookies (``openssl rand -hex 32``); by default one is
    made once and kept in the certificate directory's private folder. Give the same file to
    every gateway that serves the same sites."""
    _found: Discovered | None = None

    @model_validator(mode="after")
    def _discover(self) -> Oidc:
        self._found = discover(self.issuer, self.ca)
        return self

    @property
    def found(self) -> Discovered:
        assert self._found is not None
        return self._found


class Login(SitesMsg):
    oidc: Oidc


SecurityHeaders = bool | dict[str, str | None]
"""``true``, or the headers to change: a value replaces the default, ``null`` drops it, and
any other header is added."""


class Site(Upstream):
    idle_timeout: Annotated[str, BeforeValidator(_seconds)] = "300s"
    """How long a request or WebSocket may stay silent both ways before it is closed (``0``:
    never; a dashboard's WebSocket without pings wants hours, ``1h``)."""
    allow: list[Cidr] = []
    countries: Countries | None = None
    """Clients let in by their country (``geoip`` says which database); default: the
    file's ``countries``."""
    auth: Auth | None = None
    passthrough: bool = False
    request_headers: dict[str, str] = {}
    response_headers: dict[str, str] = {}
    security_headers: SecurityHeaders | None = None
    """HSTS, X-Content-Type-Options, Referrer-Policy and X-Frame-Options on every response
    (edgegw's own replies too) that lacks them; default: the file's ``security_headers``."""
    error_pages: ErrorPages = {}
    """Pages for replies with those statuses, over the file's ``error_pages``."""
    compress: bool | None = None
    """Compress responses (zstd, br or gzip, as the client prefers); default: the file's
    ``compress``."""
    paths: dict[str, Annotated[PathRoute, BeforeValidator(_short)]] = {}
    health_path: str | None = None
    """With several upstreams, an HTTP path to check (default: a TCP connect)."""
    login: Literal["oidc"] | None = None
    """``oidc``: only users logged in at the file's ``login.oidc`` provider reach the site
    (its callback is ``https://SITE/oauth2/callback``; ``/oauth2/sign_out`` signs out)."""
    allow_groups: list[str] = []
    """With ``login``: only members of these groups (the ID token's ``groups`` claim)."""

    @model_validator(mode="after")
    def _consistent(self) -> Site:
        schemes = {u.scheme for u in self.upstream}
        if len(schemes) > 1:
            raise ValueError("the upstreams of one site must share one scheme")
        if self.passthrough:
            if self.auth or self.paths or self.request_headers or self.response_headers \
                    or self.security_headers or self.error_pages or self.compress \
                    or self.countries or self.login:
                raise ValueError("a passthrough site forwards TLS unopened: it can have "
                                 "'allow', but no 'auth', 'paths' or headers")
        elif "tcp" in schemes:
            raise ValueError("tcp:// upstreams are for 'passthrough: true' sites")
        for prefix in self.paths:
            if not prefix.startswith("/"):
                raise ValueError(f"path '{prefix}' must start with /")
        if self.allow_groups and self.login is None:
            raise ValueError("allow_groups needs 'login: oidc' (the groups are the logged-in "
                             "user's)")
        if self.login is not None and self.auth is not None:
            raise ValueError("a site has 'login' or 'auth', not both")
        return self


class AcmeSettings(SitesMsg):
    """Certificates for every site, obtained and renewed by HTTP-01, or by DNS-01 with
    ``dns`` (edgegw-only)."""

    email: str = Field(min_length=3)
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    ca: str | None = None
    """The CA file of the ACME server's own HTTPS (a test server such as pebble)."""
    renew_interval: str = "3600s"
    profile: str | None = None
    """The CA's certificate profile (Let's Encrypt: ``classic``, ``tlsserver``,
    ``shortlived``)."""
    eab: m.AcmeEab | None = None
    """``{kid, hmac_key_file}``: the external account binding a CA such as ZeroSSL asks."""
    dns: m.AcmeDns | None = None
    """DNS-01 for every name, wildcards included: ``{provider: rfc2136, server:
    192.168.1.53:53, tsig_key: certs/acme.key}``, ``{provider: exec, command: ...}`` or
    ``{provider: httpreq, endpoint: ...}``."""


def _directory(value: Any) -> Any:
    if isinstance(value, str) and not os.path.isdir(value):
        raise ValueError(f"'{value}' is not a directory (relative paths start where the "
                         f"gateway runs: {os.getcwd()})")
    return value


def _sites(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("sites is a mapping of host names to sites, e.g. "
                         "'a.example.com: http://192.168.1.20:80'")
    for name in value:
        if not isinstance(name, str) or not _NAME.match(name.lower()):
            raise ValueError(f"'{name}' is not a host name (a.example.com, or *.example.com "
                             "for every subdomain)")
    return value


class ControlPlane(SitesMsg):
    """An xDS control plane that adds listeners and clusters beside the sites (Envoy
    Gateway, Contour, go-control-plane…): an ADS stream to ``url`` (``http://`` for HTTP/2
    in the clear, ``https://`` for TLS)."""

    url: UrlField
    node: str = Field(default="edgegw", min_length=1)
    """The node id the control plane knows this gateway by (its cluster is ``edgegw``)."""
    protocol: Literal["delta", "sotw"] = "delta"
    """``delta`` (incremental xDS, what Envoy Gateway speaks) or ``sotw`` (state of the
    world, what Contour speaks)."""
    sni: str | None = None
    ca: str | None = None
    """The CA that signs the control plane's certificate (default: the system's)."""
    client_certificate: str | None = None
    """The certificate (and ``client_key``) this gateway presents: mTLS, as Envoy Gateway
    and Contour ask."""
    client_key: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ControlPlane:
        if self.url.scheme not in ("http", "https"):
            raise ValueError("the control plane's url is http://HOST:PORT or https://HOST:PORT")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together")
        if self.client_certificate is not None and self.url.scheme != "https":
            raise ValueError("a client certificate needs an https:// url")
        return self


class StatusSite(SitesMsg):
    """The status page on a site name of its own (edgegw-only): the page and its JSON,
    read-only; nothing else of the admin API is reachable through it."""

    name: str
    allow: list[Cidr] = []
    auth: Auth | None = None

    @model_validator(mode="after")
    def _named(self) -> StatusSite:
        if not _NAME.match(self.name.lower()) or self.name.startswith("*."):
            raise ValueError(f"'{self.name}' is not a host name (status.example.com)")
        return self


def _status(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _on_off(value: Any) -> Any:
    """YAML reads an unquoted ``off`` (or ``on``) as a boolean."""
    return ("stdout" if value else "off") if isinstance(value, bool) else value


class SitesFile(SitesMsg):
    listen: Listen = Listen()
    admin: Address = ("127.0.0.1", 9901)
    certificates: Annotated[str, BeforeValidator(_directory)] = "certs"
    webroot: str = "webroot"
    """Port 80 answers ACME HTTP-01 challenges from here (certbot/acme.sh ``--webroot -w``)."""
    acme: AcmeSettings | None = None
    access_log: Annotated[str, BeforeValidator(_on_off)] = "stdout"
    """One line per request to stdout (time, site, client, request, status, duration,
    upstream, response flags and the cause of a failure); ``json``: the same as JSON lines;
    ``off``; or a file path to write the lines to."""
    security_headers: SecurityHeaders = False
    """``true`` (or the headers to change) for every site: see a site's
    ``security_headers``."""
    error_pages: ErrorPages = {}
    """``{503: starting, 502: pages/down.html}``: pages for the replies with those
    statuses, the gateway's own (no healthy backend, a refused connection, a timeout) and
    the backend's, for every site."""
    compress: bool = False
    """Compress every site's text responses (zstd, br or gzip); off by default (BREACH:
    see docs/sites.md)."""
    geoip: GeoipSettings | None = None
    countries: Countries | None = None
    """``{allow: [DE, FR]}`` or ``{deny: [...]}`` for every site (a site's own replaces it);
    needs ``geoip``."""
    crowdsec: CrowdSecSettings | None = None
    login: Login | None = None
    """``{oidc: {issuer, client_id, client_secret_file}}``: the provider that sites with
    ``login: oidc`` send their users to."""
    status: Annotated[StatusSite | None, BeforeValidator(_status)] = None
    """``status.example.com``, or ``{name, allow, auth}``: the status page (``/status`` and
    ``/status.json`` only) served on that name, like a site."""
    control_plane: ControlPlane | None = None
    """Listeners and clusters from an xDS control plane, beside the sites (a home lab never
    needs one)."""
    sites: Annotated[dict[str, Annotated[Site, BeforeValidator(_short)]],
                     BeforeValidator(_sites), Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> SitesFile:
        if self.status is not None and self.status.name in self.sites:
            raise ValueError(f"status: '{self.status.name}' is a site already: give the status "
                             "page a name of its own")
        if self.acme is not None and self.listen.http is None:
            raise ValueError("acme needs the port-80 listener (listen.http): HTTP-01 "
                             "challenges come in there" if self.acme.dns is None else
                             "acme's settings ride on the port-80 listener (listen.http), "
                             "even under DNS-01")
        logins = [n for n, site in self.sites.items() if site.login is not None]
        if logins and self.login is None:
            raise ValueError(f"site {logins[0]} has 'login: oidc', but the file has no "
                             "login: {oidc: {issuer, client_id, client_secret_file}}")
        wanting = [n for n, site in self.sites.items() if site.countries is not None]
        if self.geoip is None and (self.countries is not None or wanting):
            raise ValueError("countries needs geoip: {country_db: PATH} (a MaxMind .mmdb "
                             "file, such as GeoLite2-Country.mmdb)")
        return self
