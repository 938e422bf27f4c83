"""Resources followed as Envoy's subscriptions (EDS, RDS) follow them, from a file or a control
plane.

A file holds a DiscoveryResponse of one resource, read at start and read again when the file
changes (checked by stat twice a second, as the config file is; a rename into place, as Envoy
wants it, or a write). A control plane's resource arrives through the xDS mux (``watch``);
until the first one is accepted the subscription is not ``ready`` (what warming waits for,
up to the source's ``initial_fetch_timeout``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .. import log
from ..stats import Counter, Store
from . import model as m
from .source import FileSignature, file_signature

_log = log.get("config")

POLL = 0.5
M = TypeVar("M", bound=BaseModel)


async def first_version(ready: asyncio.Event, source: m.ConfigSource, timeouts: Counter,
                        what: str) -> None:
    """Waits for ``ready`` (a first version in) up to the source's initial_fetch_timeout;
    past it, counted in ``timeouts`` and logged as ``what``'s, what waits goes on without
    it, as in Envoy."""
    timeout = source.fetch_timeout
    try:
        await asyncio.wait_for(ready.wait(), timeout or None)
    except TimeoutError:
        timeouts.value += 1
        _log.warning("%s: nothing from the control plane in %.1f s (initial_fetch_timeout): "
                     "going on without it", what, timeout)


class Warms(Protocol):
    """What a cluster or listener waits for before it serves (EDS, RDS, SDS)."""

    ready: asyncio.Event

    async def warmed(self) -> None: ...


async def warmed(subs: list[Warms]) -> None:
    """Waits for each of ``subs``' first version (each up to its initial_fetch_timeout)."""
    waiting = [s for s in subs if not s.ready.is_set()]
    if waiting:
        await asyncio.gather(*(s.warmed() for s in waiting))


class Cancel(Protocol):
    def cancel(self) -> None: ...


class Watches(Protocol):
    """The xDS mux, as a subscription sees it."""

    def watch(self, source: m.ConfigSource, type_url: str, name: str, watcher: Any) -> Cancel:
        ...


class SubscriptionError(ValueError):
    """Why a file's new version is refused (what it gave before stays)."""


@dataclass(frozen=True)
class Response(Generic[M]):
    version: str
    """``version_info``."""
    resource: M | None
    """The one resource, parsed; None when the response lists none."""
    raw: dict[str, Any]
    """The resource as written, ``@type`` included (what /config_dump shows)."""


def read_response(path: str, kind: str, url: str, model: type[M]) -> Response[M]:
    """The DiscoveryResponse in the file at ``path``, holding at most one resource of type
    ``url`` (``kind`` names it in errors: EDS, RDS), parsed as ``model``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc: Any = yaml.safe_load(f)
    except OSError as e:
        raise SubscriptionError(f"unable to read {kind} file '{path}': {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SubscriptionError(f"{kind} file '{path}' is not valid YAML/JSON: {e}") from None
    resources = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(resources, list):
        raise SubscriptionError(f"{kind} file '{path}' needs a 'resources' list")
    version = str(doc.get("version_info") or "")
    if not resources:
        return Response(version, None, {})
    if len(resources) != 1:
        raise SubscriptionError(f"Unexpected {kind} resource length: {len(resources)} "
                                "(expected 1)")
    raw = dict(resources[0]) if isinstance(resources[0], dict) else {}
    if raw.get("@type") != url:
        raise SubscriptionError(f"{kind} file '{path}': resource \"@type\" must be {url}")
    return Response(version, parse(raw, model, f"{kind} file '{path}': "), raw)


def parse(raw: dict[str, Any], model: type[M], prefix: str) -> M:
    """One resource as JSON (``@type`` ignored), checked as ``model``."""
    try:
        return model.model_validate({k: v for k, v in raw.items() if k != "@type"})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SubscriptionError(f"{prefix}{where}: {first['msg']}") from None


class Subscription(Generic[M]):
    """Follows the one resource named ``name`` from ``source``, calling ``update`` with each
    new version (a subclass says its ``kind``, type ``url``, ``model``, the ``noun`` Envoy's
    errors use, and ``name_of``). Each version is counted in ``attempt``, each refused one in
    ``rejected`` and logged as ``what``'s (e.g. "cluster 'app'"). ``load`` is the first read
    (a file) or the start of the watch (a control plane, through ``xds``); ``start`` follows
    a file's changes."""

    kind = ""
    url = ""
    noun = ""
    model: type[M]

    def __init__(self, source: m.ConfigSource, name: str, what: str, attempt: Counter,
                 rejected: Counter, xds: Watches | None, prefix: str, store: Store) -> None:
        self.source, self.path, self.name, self.what = source, source.file, name, what
        self.attempt, self.rejected = attempt, rejected
        self.failure = store.counter(prefix + "update_failure")
        """Counted when the control plane's stream fails, as Envoy counts it."""
        self.timeouts = store.counter(prefix + "init_fetch_timeout")
        self.xds = xds if source.xds else None
        self.seen: FileSignature | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch: Cancel | None = None
        self.ready = asyncio.Event()
        """Set once a first version is in (at once for a file)."""
        self.prefix = prefix
        """Where its stats are (``cluster.app.``)."""
        self.counting = True
        """Whether the version ``update`` takes is counted (see ``xds_update``)."""

    def name_of(self, resource: M) -> str:
        raise NotImplementedError

    def update(self, response: Response[M]) -> None:
        raise NotImplementedError

    def _refused(self, why: str) -> None:
        self.rejected.value += 1
        _log.warning("%s: %s update rejected, what it gave before stays: %s",
                     self.kind.lower(), self.what, why)

    def fetch(self) -> Response[M] | None:
        self.seen = file_signature(self.path)
        self.attempt.value += 1
        try:
            response = read_response(self.path, self.kind, self.url, self.model)
            got = response.resource
            if got is not None and self.name_of(got) != self.name:
                raise SubscriptionError(f"Unexpected {self.kind} {self.noun} (expecting "
                                        f"{self.name}): {self.name_of(got)}")
        except SubscriptionError as e:
            self._refused(str(e))
            return None
        return response

    def load(self) -> None:
        if self.xds is not None:
            if self._watch is None:
                self.attempt.value += 1  # (Envoy counts the first request as an attempt)
                self._watch = self.xds.watch(self.source, self.url, self.name, self)
            return
        response = self.fetch()
        if response is not None:
            self.update(response)
        self.ready.set()

    def xds_update(self, version: str, resources: dict[str, dict[str, Any]],
                   count: bool, versions: dict[str, str] | None = None) -> str | None:
        """A control plane's version of the resource: None when taken, else why not; counted
        in the stats when ``count`` says so."""
        self.counting = count
        if count:
            self.attempt.value += 1
        raw = resources[self.name]
        version = (versions or {}).get(self.name, version)
        try:
            resource = parse(raw, self.model, f"{self.kind} {self.noun} '{self.name}': ")
        except SubscriptionError as e:
            if count:
                self._refused(str(e))
            return str(e)
        self.update(Response(version, resource, raw))
        self.counting = True
        self.ready.set()
        return None

    def xds_refused(self, why: str) -> None:
        self.attempt.value += 1
        self._refused(why)

    def xds_failed(self) -> None:
        self.failure.value += 1

    async def warmed(self) -> None:
        await first_version(self.ready, self.source, self.timeouts,
                            f"{self.kind.lower()}: {self.what}")

    def start(self) -> None:
        if self._task is None and self.xds is None:
            self._task = asyncio.ensure_future(self._watch_file())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            if file_signature(self.path) != self.seen:
                await asyncio.sleep(POLL)  # let a writer finish
                self.load()
