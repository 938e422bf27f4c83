"""One control-plane stream per node under ``--concurrency N``, as Envoy has one for all its
threads: worker 0 leads (its streams are the node's), the other workers follow it.

The leader publishes what each response it handled holds (``Published``): per channel and
type, the resources as the control plane sent them (protobuf bytes), with the version, kept
whole for LDS and CDS and per resource for the others (a delta stream's removals applied).
A follower asks the leader's private admin socket for them
(``GET /edgegw/xds?after=G&epoch=E``: answered once something is newer than generation ``G``,
or after 25 s, and at once by a leader of another epoch) and gives each changed type to its
own watchers through the same reading and checks (``Follower``), without a stream and
without answering: the leader's ACKs and NACKs are the node's. A follower that cannot reach
the leader (restarting) keeps serving what it has and asks again; a leader that restarted
(a new ``epoch``) is followed from its first generation.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from .. import log
from .resources import ResourceError, to_dict
from .sotw import TypeState

_log = log.get("config")

WAIT = 25.0
"""How long the leader holds a follower's request when nothing is new."""


class Published:
    """The leader's side: what the followers are given."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(8)
        self.generation = 0
        self.types: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()

    def _entry(self, key: str, wildcard: bool) -> dict[str, Any]:
        return self.types.setdefault(key, {"version": "", "wildcard": wildcard,
                                           "resources": {}, "gen": 0})

    def sotw(self, key: str, wildcard: bool, version: str,
             resources: list[tuple[str, str, bytes]]) -> None:
        """A state-of-the-world response: (name, type URL, bytes) of each resource."""
        entry = self._entry(key, wildcard)
        given: dict[str, list[str]] = {}
        for name, url, value in resources:  # (of a name given twice, the first: as taken)
            given.setdefault(name, [url, base64.b64encode(value).decode(), version])
        entry["resources"] = given if wildcard else {**entry["resources"], **given}
        entry["version"] = version
        self._bump(entry)

    def delta(self, key: str, wildcard: bool, version: str,
              resources: list[tuple[str, str, bytes, str]], removed: list[str]) -> None:
        """A delta response: (name, type URL, bytes, version) of each, and the removed."""
        entry = self._entry(key, wildcard)
        for name, url, value, rversion in resources:
            entry["resources"][name] = [url, base64.b64encode(value).decode(), rversion]
        for name in removed:
            entry["resources"].pop(name, None)
        entry["version"] = version
        self._bump(entry)

    def _bump(self, entry: dict[str, Any]) -> None:
        self.generation += 1
        entry["gen"] = self.generation
        self._changed.set()
        self._changed = asyncio.Event()

    async def doc(self, after: int, epoch: str) -> dict[str, Any]:
        """Everything, once something is newer than ``after`` of ``epoch`` (or after
        ``WAIT``)."""
        if epoch == self.epoch and self.generation <= after:
            try:
                await asyncio.wait_for(self._changed.wait(), WAIT)
            except TimeoutError:
                pass
        return {"epoch": self.epoch, "generation": self.generation, "types": self.types}


class Streams(Protocol):
    """What a follower feeds: the mux's channels (by key), each with its types' states."""

    types: dict[str, TypeState]


class Mux(Protocol):
    @property
    def streams(self) -> Mapping[str, Streams]: ...


class Follower:
    """A follower's side: asks the leader at ``leader_socket`` and feeds ``mux``'s channels."""

    def __init__(self, mux: Mux, leader_socket: str) -> None:
        self.mux, self.leader_socket = mux, leader_socket
        self.epoch = ""
        self.generation = 0
        self.last: dict[str, dict[str, Any]] = {}
        """The leader's entries as last seen, by key."""
        self.given: dict[tuple[str, str], list[str]] = {}
        """What each watched resource was last given as, by (key, name)."""
        self.task: asyncio.Task[None] | None = None
        self.failing = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def watched(self, key: str) -> None:
        """A new watcher on a follower's channel: given what the leader has at once."""
        entry = self.last.get(key)
        if entry is not None:
            asyncio.get_running_loop().call_soon(self._apply, key, entry)

    async def _run(self) -> None:
        while True:
            try:
                doc = await self._ask()
            except (OSError, ValueError, TimeoutError, IndexError) as e:
                if not self.failing:
                    _log.info("xds: the leading worker is not answering (%s): serving what "
                              "this worker has, asking again", e or type(e).__name__)
                self.failing = True
                await asyncio.sleep(0.5)
                continue
            if self.failing:
                _log.info("xds: following the leading worker again")
            self.failing = False
            if doc["epoch"] != self.epoch:
                self.epoch, self.generation = doc["epoch"], 0
            for key, entry in doc["types"].items():
                if entry["gen"] > self.generation or key not in self.last:
                    self.last[key] = entry
                    self._apply(key, entry)
            self.generation = doc["generation"]

    async def _ask(self) -> dict[str, Any]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.leader_socket, limit=2**26), 5)
        try:
            writer.write(f"GET /edgegw/xds?after={self.generation}&epoch={self.epoch} "
                         "HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), WAIT + 10)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1") or "no answer")
        doc: dict[str, Any] = json.loads(body)
        return doc

    def _apply(self, key: str, entry: dict[str, Any]) -> None:
        channel_key, type_url = key.rsplit("|", 1)
        channel = self.mux.streams.get(channel_key)
        state = channel.types.get(type_url) if channel is not None else None
        if state is None:
            return
        resources: dict[str, list[str]] = entry["resources"]
        if not state.wildcard:  # (only what is watched, and only what changed)
            resources = {n: r for n, r in resources.items()
                         if n in state.watchers and self.given.get((key, n)) != r}
            if not resources:
                return
        try:
            got, duplicates = state.read([
                (url, functools.partial(to_dict, url, base64.b64decode(value)))
                for url, value, _ in resources.values()])
        except ResourceError:
            return  # (the leader refused it too, and said so)
        state.deliver(entry["version"], got, got, duplicates,
                      {n: r[2] for n, r in resources.items()})
        for name, r in resources.items():
            self.given[(key, name)] = r
