"""edgegw: an edge TLS gateway that speaks Envoy's v3 bootstrap config."""

__version__ = "0.1.0"
