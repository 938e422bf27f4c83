"""Counters and gauges with Envoy's names, kept in one store per process.

Each component declares its stats together in one tuple (as Envoy's ``ALL_*_STATS`` macros do)
and gets a ``StatSet`` whose attributes are the live objects, so the hot path pays one
attribute lookup and an integer add. The admin port renders the store as Envoy's /stats text.
"""

from __future__ import annotations

from collections.abc import Iterable


class Counter:
    """A value that only goes up; Envoy's counters."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Gauge:
    """A value that goes up and down; Envoy's gauges."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Store:
    """All stats of this process, by full Envoy name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}

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

    def values(self) -> dict[str, int]:
        out = {n: c.value for n, c in self.counters.items()}
        out.update((n, g.value) for n, g in self.gauges.items())
        return out

    def text(self) -> str:
        """Envoy's plain /stats output: ``name: value`` lines sorted by name."""
        return "".join(f"{n}: {v}\n" for n, v in sorted(self.values().items()))


class StatSet:
    """The stats of one component instance under a prefix, as attributes."""

    def __init__(self, store: Store, prefix: str, counters: Iterable[str] = (),
                 gauges: Iterable[str] = (), code_classes: str = "") -> None:
        self._store = store
        self._prefix = prefix
        self._classes = [store.counter(f"{prefix}{code_classes}_{k}xx") if k else Counter()
                         for k in range(6)] if code_classes else []
        for name in counters:
            setattr(self, name, store.counter(prefix + name))
        for name in gauges:
            setattr(self, name, store.gauge(prefix + name))

    def count_code(self, code: int) -> None:
        """Bumps ``<kind>_1xx`` … ``<kind>_5xx`` for a response code; the set must declare
        them with ``code_classes``."""
        self._classes[code // 100 if 100 <= code < 600 else 5].value += 1

    def counter(self, name: str) -> Counter:
        """A stat whose name is only known at run time (e.g. ``upstream_rq_503``)."""
        return self._store.counter(self._prefix + name)
