"""Load balancers: which host of a cluster's (healthy) hosts gets the next request.

Each balancer is built from the list of hosts it may pick from and rebuilt when that list
changes (membership or health). ROUND_ROBIN, LEAST_REQUEST and RANDOM honour
``load_balancing_weight``. RING_HASH and MAGLEV are built exactly as Envoy builds them
(xxHash64 of ``address:port``, same ring and table construction), so a request with a given
hash key reaches the same backend through edgegw as through Envoy.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import xxhash

from ..config import model as m

if TYPE_CHECKING:
    from .host import Host

_xxh64 = xxhash.xxh64_intdigest


class LoadBalancer:
    """Picks among hosts; ``hash`` is the request's hash-policy value (None when it has none)."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    """Plain rotation; with unequal weights, smooth weighted round robin (each host's share is
    its weight, spread out rather than in bursts, as Envoy's EDF scheduler spreads them)."""

    def __init__(self, hosts: list[Host]) -> None:
        super().__init__(hosts)
        self.weighted = len({h.weight for h in hosts}) > 1
        self.current = [0] * len(hosts)
        self.total = sum(h.weight for h in hosts)
        self.next = random.randrange(len(hosts)) if hosts else 0

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if not self.weighted:
            self.next = (self.next + 1) % len(hosts)
            return hosts[self.next]
        cur = self.current
        best = 0
        for i, h in enumerate(hosts):
            cur[i] += h.weight
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return hosts[best]


class LeastRequest(LoadBalancer):
    """Power of N choices: the host with the fewest active requests (per unit of weight)."""

    def __init__(self, hosts: list[Host], choice_count: int = 2) -> None:
        super().__init__(hosts)
        self.choice_count = choice_count

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        hosts = self.hosts
        if len(hosts) <= 1:
            return hosts[0] if hosts else None
        picks = [random.choice(hosts) for _ in range(self.choice_count)]
        return max(picks, key=lambda h: h.weight / (h.rq_active + 1))


class Random(LoadBalancer):
    def __init__(self, hosts: list[Host]) -> None:
        super().__init__(hosts)
        self.weights = ([h.weight for h in hosts] if len({h.weight for h in hosts}) > 1
                        else None)

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        if not self.hosts:
            return None
        if self.weights is None:
            return random.choice(self.hosts)
        return random.choices(self.hosts, self.weights)[0]


def _normalized(hosts: list[Host]) -> list[tuple[Host, float]]:
    total = sum(h.weight for h in hosts)
    return [(h, h.weight / total) for h in hosts]


def _key(host: Host, use_hostname: bool) -> str:
    return host.hostname if use_hostname and host.hostname else host.label


class RingHash(LoadBalancer):
    """Ketama-style consistent hashing ring (Envoy's ring_hash_lb)."""

    def __init__(self, hosts: list[Host], cfg: m.RingHashLbConfig, use_hostname: bool) -> None:
        super().__init__(hosts)
        self.ring: list[tuple[int, Host]] = []
        weights = _normalized(hosts)
        if not weights:
            self.hashes: list[int] = []
            self.min_hashes = self.max_hashes = 0
            return
        low = min(w for _, w in weights)
        scale = min(math.ceil(low * cfg.minimum_ring_size) / low, float(cfg.maximum_ring_size))
        current = target = 0.0
        counts = []
        for host, w in weights:
            prefix = _key(host, use_hostname) + "_"
            target += scale * w
            i = 0
            while current < target:
                self.ring.append((_xxh64(f"{prefix}{i}".encode()), host))
                i += 1
                current += 1
            counts.append(i)
        self.ring.sort(key=lambda e: e[0])
        self.hashes = [e[0] for e in self.ring]
        self.min_hashes, self.max_hashes = min(counts), max(counts)

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        if not self.ring:
            return None
        h = random.getrandbits(64) if hash is None else hash
        # The first entry whose hash is >= h, wrapping to the start (Envoy's ketama search).
        i = bisect.bisect_left(self.hashes, h)
        if i == len(self.ring):
            i = 0
        if attempt:
            i = (i + attempt) % len(self.ring)
        return self.ring[i][1]


class _MaglevEntry:
    """One host's walk through the Maglev table: its permutation and how far it got."""

    __slots__ = ("host", "weight", "offset", "skip", "target", "next", "count")

    def __init__(self, key: str, host: Host, weight: float, n: int) -> None:
        self.host = host
        self.weight = weight
        self.offset = _xxh64(key.encode()) % n
        self.skip = _xxh64(key.encode(), 1) % (n - 1) + 1
        self.target = 0.0
        self.next = 0
        self.count = 0


class Maglev(LoadBalancer):
    """Maglev lookup table (Envoy's maglev_lb): minimal disruption when hosts come and go."""

    def __init__(self, hosts: list[Host], table_size: int, use_hostname: bool) -> None:
        super().__init__(hosts)
        self.size = table_size
        self.table: list[Host] = []
        weights = sorted(((_key(h, use_hostname), h, w) for h, w in _normalized(hosts)),
                         key=lambda e: e[0])
        if not weights:
            self.min_entries = self.max_entries = 0
            return
        n = table_size
        top = max(w for _, _, w in weights)
        entries = [_MaglevEntry(k, h, w, n) for k, h, w in weights]
        slots: list[int] = [-1] * n
        filled = 0
        for iteration in itertools.count(1):
            for idx, e in enumerate(entries):
                if filled == n:
                    break
                if iteration * e.weight < e.target:
                    continue
                e.target += top
                c = (e.offset + e.skip * e.next) % n
                while slots[c] >= 0:
                    e.next += 1
                    c = (e.offset + e.skip * e.next) % n
                slots[c] = idx
                e.next += 1
                e.count += 1
                filled += 1
            if filled == n:
                break
        self.table = [entries[i].host for i in slots]
        self.min_entries = min(e.count for e in entries)
        self.max_entries = max(e.count for e in entries)

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        if not self.table:
            return None
        h = random.getrandbits(64) if hash is None else hash
        if attempt:
            h ^= (0xFFFFFFFFFFFFFFFF - attempt + 1) & 0xFFFFFFFFFFFFFFFF
        return self.table[h % self.size]


class LocalityWeighted(LoadBalancer):
    """Envoy's locality-weighted balancing: a locality (a group of the load assignment) by its
    weight scaled down by the share of its hosts that may be used (times the 1.4
    overprovisioning factor, capped at 1), then a host within it by the cluster's policy.
    Localities take turns by smooth weighted round robin, as Envoy's EDF scheduler spreads
    them. Envoy Gateway splits traffic between backends this way."""

    def __init__(self, hosts: list[Host], every: list[Host],
                 make: Callable[[list[Host]], LoadBalancer]) -> None:
        super().__init__(hosts)
        total: dict[int, int] = {}
        weight: dict[int, int] = {}
        for h in every:
            total[h.locality] = total.get(h.locality, 0) + 1
            weight[h.locality] = h.locality_weight
        usable: dict[int, list[Host]] = {}
        for h in hosts:
            usable.setdefault(h.locality, []).append(h)
        self.localities = [(make(group), weight[loc] * min(1.0, 1.4 * len(group) / total[loc]))
                           for loc, group in sorted(usable.items())]
        self.current = [0.0] * len(self.localities)
        self.total = sum(w for _, w in self.localities)

    def choose(self, hash: int | None, attempt: int = 0) -> Host | None:
        if not self.localities:
            return None
        cur = self.current
        best = 0
        for i, (_, w) in enumerate(self.localities):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return self.localities[best][0].choose(hash, attempt)


def build(cfg: m.Cluster, hosts: list[Host], every: list[Host] | None = None) -> LoadBalancer:
    """The balancer that the cluster's lb_policy (or load_balancing_policy) names, over
    ``hosts``; ``every`` is all the cluster's hosts, usable or not (locality weighting
    scales a locality by its usable share)."""
    if cfg.load_balancing_policy is not None:
        typed = cfg.load_balancing_policy.chosen

        def make(group: list[Host]) -> LoadBalancer:
            if isinstance(typed, m.LeastRequestPolicy):
                return LeastRequest(group, typed.choice_count)
            return Random(group) if isinstance(typed, m.RandomPolicy) else RoundRobin(group)

        llc = typed.locality_lb_config
        if llc is not None and llc.locality_weighted_lb_config is not None:
            return LocalityWeighted(hosts, every if every is not None else hosts, make)
        return make(hosts)
    use_hostname = cfg.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing
    policy = cfg.lb_policy
    if policy == "LEAST_REQUEST":
        lr = cfg.least_request_lb_config or m.LeastRequestLbConfig()
        return LeastRequest(hosts, lr.choice_count)
    if policy == "RANDOM":
        return Random(hosts)
    if policy == "RING_HASH":
        return RingHash(hosts, cfg.ring_hash_lb_config or m.RingHashLbConfig(), use_hostname)
    if policy == "MAGLEV":
        return Maglev(hosts, (cfg.maglev_lb_config or m.MaglevLbConfig()).table_size,
                      use_hostname)
    return RoundRobin(hosts)
