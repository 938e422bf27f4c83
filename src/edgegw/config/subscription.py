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

from .source import FileSignature, file_signature

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


class FileSubscription:
    """Calls ``load`` again whenever the file at ``path`` changes, once started."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: FileSignature | None = None
        self._task: asyncio.Task[None] | None = None

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
