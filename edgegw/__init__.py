"""edgegw: an edge TLS gateway that speaks Envoy's v3 bootstrap config."""

from . import compiled

__version__ = "0.1.0"
compiled.check()
