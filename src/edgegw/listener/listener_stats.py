"""A listener's stats (``listener.<address>.*``), apart from ``Listener`` so that it can be
compiled: a ``StatSet`` subclass stays interpreted, as its fields are filled by name."""

from __future__ import annotations

from ..stats import Counter, Gauge, StatSet


class ListenerStats(StatSet):
    """``listener.<address>.*``."""

    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    no_filter_chain_match: Counter
    downstream_listener_filter_error: Counter
    downstream_pre_cx_timeout: Counter
    downstream_global_cx_overflow: Counter
    downstream_cx_active: Gauge
