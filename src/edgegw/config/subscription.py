"""Resources followed in files, as Envoy's filesystem subscriptions (EDS, RDS) follow them: a
DiscoveryResponse holding one resource, read at start and read again when the file changes
(checked by stat twice a second, as the config file is; a rename into place, as Envoy wants
it, or a write)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .. import log
from ..stats import Counter
from .source import FileSignature, file_signature

_log = log.get("config")

POLL = 0.5
M = TypeVar("M", bound=BaseModel)


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
    try:
        return Response(version, model.model_validate(
            {k: v for k, v in raw.items() if k != "@type"}), raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SubscriptionError(f"{kind} file '{path}': {where}: {first['msg']}") from None


class FileSubscription(Generic[M]):
    """Calls ``load`` again whenever the file at ``path`` changes, once started. ``fetch``
    reads it for ``load``: the one resource named ``name`` (a subclass says its ``kind``,
    type ``url``, ``model``, the ``noun`` Envoy's errors use, and ``name_of``), counting
    each read in ``attempt`` and each refused one in ``rejected`` (logged as ``what``'s,
    e.g. "cluster 'app'")."""

    kind = ""
    url = ""
    noun = ""
    model: type[M]

    def __init__(self, path: str, name: str, what: str, attempt: Counter,
                 rejected: Counter) -> None:
        self.path, self.name, self.what = path, name, what
        self.attempt, self.rejected = attempt, rejected
        self.seen: FileSignature | None = None
        self._task: asyncio.Task[None] | None = None

    def name_of(self, resource: M) -> str:
        raise NotImplementedError

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
            self.rejected.value += 1
            _log.warning("%s: %s update rejected, what it gave before stays: %s",
                         self.kind.lower(), self.what, e)
            return None
        return response

    def load(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            if file_signature(self.path) != self.seen:
                await asyncio.sleep(POLL)  # let a writer finish
                self.load()
