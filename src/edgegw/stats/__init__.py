"""Counters, gauges and histograms with Envoy's names, kept in one store per process.

Each component declares its stats together in one ``StatSet`` subclass (as Envoy's
``ALL_*_STATS`` macros do) whose attributes are the live objects, so the hot path pays one
attribute lookup and an integer add. Rendering (Envoy's text, JSON and Prometheus shapes with
Envoy's tag extraction) lives in ``render``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .values import BUCKETS as BUCKETS
from .values import Counter as Counter
from .values import Gauge as Gauge
from .values import Histogram as Histogram


class Store:
    """All stats of this process, by full Envoy name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}
        self.private: dict[str, Histogram] = {}
        """edgegw's own measures for the status page (e.g. WebSocket durations, kept apart
        from request latency); never in /stats, so the stat names stay Envoy's."""

    def counter(self, name: str) -> Counter:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Counter()
        return c

    def gauge(self, name: str) -> Gauge:
        g = self.gauges.get(name)
        if g is None:
            g = self.gauges[name] = Gauge()
        return g

    def histogram(self, name: str) -> Histogram:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram()
        return h

    def private_histogram(self, name: str) -> Histogram:
        h = self.private.get(name)
        if h is None:
            h = self.private[name] = Histogram()
        return h

    def dump(self) -> dict[str, Any]:
        """Everything, raw, for the supervisor to add up over workers."""
        return {"counters": {n: c.value for n, c in self.counters.items()},
                "gauges": {n: g.value for n, g in self.gauges.items()},
                "histograms": {n: [h.counts, h.sum, h.count]
                               for n, h in self.histograms.items()}}

    @classmethod
    def merged(cls, dumps: list[dict[str, Any]]) -> Store:
        """Workers' stores as one: counters and histograms add up; gauges that count things
        in progress (``*_active``, memory) add up, the others (membership, health, state)
        are the same fact seen by each worker and keep the highest value, and so do the
        counters of what every worker does once for the same cause (a certificate update, a
        config reload, a DNS refresh, a health check round), which Envoy does once."""
        out = cls()
        for d in dumps:
            for n, v in d["counters"].items():
                c = out.counter(n)
                c.value = max(c.value, v) if _shared(n) else c.value + v
            for n, v in d["gauges"].items():
                g = out.gauges.get(n)
                if g is None:
                    out.gauge(n).value = v
                elif _additive(n):
                    g.value += v
                else:
                    g.value = max(g.value, v)
            for n, (counts, total, count) in d["histograms"].items():
                h = out.histogram(n)
                h.counts = [a + b for a, b in zip(h.counts, counts, strict=True)]
                h.sum += total
                h.count += count
        return out

    def values(self) -> dict[str, int]:
        out = {n: c.value for n, c in self.counters.items()}
        out.update((n, g.value) for n, g in self.gauges.items())
        return out


_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}
"""Annotation → the Store method that makes that kind of stat."""


_SHARED_PREFIXES = ("sds.", "edgegw.certificate_directory.", "edgegw.config_reload.")
_SHARED_PARTS = (".health_check.", ".outlier_detection.")
_SHARED_LAST = ("ssl_context_update_by_sds", "update_attempt", "update_success",
                "update_failure", "update_rejected", "update_no_rebuild", "update_empty",
                "config_reload", "membership_change")


def _shared(name: str) -> bool:
    """Counters of one fact that each worker sees and counts for itself."""
    return (name.startswith(_SHARED_PREFIXES) or any(p in name for p in _SHARED_PARTS)
            or name.rsplit(".", 1)[-1] in _SHARED_LAST)


def _additive(name: str) -> bool:
    """Gauges that count this process's own connections, requests or memory."""
    if ".outlier_detection." in name:
        return False  # each worker ejects the same failing host: one ejection, not N
    last = name.rsplit(".", 1)[-1]
    return last.endswith("_active") or last in ("memory_allocated", "active_faults")


class StatSet:
    """The stats of one component instance under a prefix, as attributes.

    A component declares its stats once, as annotations of a subclass (Envoy's ``ALL_*_STATS``
    macro lists): ``upstream_cx_total: Counter``. The attribute name is the stat name, so a
    misspelt stat fails the type check, not production.
    """

    _declared: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: dict[str, str] = dict(cls._declared)
        for name, kind in cls.__dict__.get("__annotations__", {}).items():
            kind = kind if isinstance(kind, str) else kind.__name__
            if kind in _KINDS:
                declared[name] = kind
        cls._declared = tuple(declared.items())

    def __init__(self, store: Store, prefix: str, code_classes: str = "",
                 lazy_classes: bool = False) -> None:
        self._store = store
        self._prefix = prefix
        self._class_prefix = f"{prefix}{code_classes}_"
        self._classes: list[Counter | None] = [
            None if lazy_classes or not k else store.counter(f"{self._class_prefix}{k}xx")
            for k in range(6)] if code_classes else []
        for name, kind in self._declared:
            setattr(self, name, getattr(store, _KINDS[kind])(prefix + name))

    def count_code(self, code: int) -> None:
        """Bumps ``<kind>_1xx`` … ``<kind>_5xx`` for a response code; the set must declare
        them with ``code_classes``."""
        k = code // 100 if 100 <= code < 600 else 5
        c = self._classes[k]
        if c is None:  # created on first use, as Envoy creates the cluster's code stats
            c = self._classes[k] = self._store.counter(f"{self._class_prefix}{k}xx")
        c.value += 1

    def counter(self, name: str) -> Counter:
        """A stat whose name is only known at run time (e.g. ``upstream_rq_503``)."""
        return self._store.counter(self._prefix + name)
