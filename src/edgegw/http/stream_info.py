"""The record of one request, or of one tcp_proxy session: Envoy's StreamInfo.

What happened to it (timings, bytes, status, response flags, details, the route, cluster and
host it went to) and, held by it, the facts of its downstream connection (addresses, TLS,
SNI, the client a PROXY header gave). Filters read and write it through their callbacks; the
access log reads nothing else.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Protocol

from ..config.model import address_string

if TYPE_CHECKING:
    from ..upstream.cluster import Cluster
    from ..upstream.host import Host
    from .codec import Headers, RequestHead
    from .router.table import Route, VirtualHost


class ResponseFlag(enum.Enum):
    """Envoy's response flags. A stream keeps them in the order they were set, which is the
    order Envoy 1.40 prints them in (a fault filter's delay, then the upstream's failure:
    ``DI,UF``), not the order of its enum."""

    LH = "LH"
    UH = "UH"
    UT = "UT"
    LR = "LR"
    UR = "UR"
    UF = "UF"
    UC = "UC"
    UO = "UO"
    NR = "NR"
    DI = "DI"
    FI = "FI"
    RL = "RL"
    UAEX = "UAEX"
    RLSE = "RLSE"
    DC = "DC"
    URX = "URX"
    SI = "SI"
    IH = "IH"
    DPE = "DPE"
    UMSDR = "UMSDR"
    RFCF = "RFCF"
    NFCF = "NFCF"
    DT = "DT"
    UPE = "UPE"
    NC = "NC"
    OM = "OM"
    DF = "DF"
    DO = "DO"
    DR = "DR"
    UDO = "UDO"


class ConnectionInfo(Protocol):
    """The downstream connection's facts (Envoy's ConnectionInfoProvider), read by filters and
    access logs."""

    remote_ip: str
    remote_port: int
    """The client: the PROXY header's when one came, else the socket peer."""
    direct_remote_ip: str
    direct_remote_port: int
    """The socket peer."""
    local_address: str
    """The address the client reached, as Envoy prints it: ``127.0.0.1:8443``,
    ``[::1]:8443``."""
    tls: bool
    sni: str | None


class StreamInfo:
    """What one request (or tcp_proxy session) did. Defaults live on the class and only what
    changes is set on the instance: most requests keep most of them."""

    code = 0
    flags: tuple[ResponseFlag, ...] = ()
    details = ""
    """Envoy's RESPONSE_CODE_DETAILS: why the response is what it is."""
    failure_reason = ""
    """UPSTREAM_TRANSPORT_FAILURE_REASON."""
    bytes_received = 0
    bytes_sent = 0
    route: Route | None = None
    vhost: VirtualHost | None = None
    cluster: Cluster | None = None
    host: Host | None = None
    """The host of the latest attempt (what access logs and counters name)."""
    response_headers: Headers | None = None
    local_reply_body = ""
    """%LOCAL_REPLY_BODY%: a local reply's body, as local_reply_config formats it."""

    def __init__(self, downstream: ConnectionInfo, protocol: str | None,
                 request: RequestHead | None = None) -> None:
        self.downstream = downstream
        self.protocol = protocol
        self.request = request
        """The request as the filters left it (None for a tcp_proxy session)."""
        self.remote_ip = downstream.remote_ip
        self.remote_port = downstream.remote_port
        """The client of this request: the connection's, unless the forwarding rules
        (trusted hops, original IP detection) found another (its port then 0)."""
        self.start_time = time.time()
        self.start_mono = time.monotonic()

    def add_flag(self, flag: ResponseFlag) -> None:
        if flag not in self.flags:
            self.flags = (*self.flags, flag)

    def flags_text(self) -> str:
        """``%RESPONSE_FLAGS%``: ``UF,URX``, or ``-`` when none."""
        return ",".join(f.value for f in self.flags) or "-"

    def expand(self, value: str) -> str:
        """The %OPERATORS% a header value may carry (request_headers_to_add …), for this
        request."""
        return (value.replace("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", self.remote_ip)
                .replace("%DOWNSTREAM_REMOTE_ADDRESS%",
                         address_string(self.remote_ip, self.remote_port))
                .replace("%REQUESTED_SERVER_NAME%", self.downstream.sni or "")
                .replace("%%", "%"))

    def duration_ms(self) -> int:
        return int((time.monotonic() - self.start_mono) * 1000)
