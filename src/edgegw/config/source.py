"""Reading bootstrap text into plain data, remembering where each value came from.

Envoy reads YAML and JSON into protobuf; we read them into dicts and lists and keep, for every
path such as ``static_resources.listeners[0].address``, the file and line it was written on, so
that every error can point at the line the user has to change. ``--config-yaml`` is merged over
``-c`` with protobuf's MergeFrom rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


class ConfigError(Exception):
    """One or more problems with a bootstrap; ``problems`` holds each as a line of text."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


FileSignature = tuple[str, int, int, int]


def file_signature(path: str) -> FileSignature:
    """What tells a changed file: its target (a swapped symlink), inode, ctime (its content,
    owner or mode changed: a key made readable counts) and size."""
    try:
        st = os.stat(path)
    except OSError:
        return ("", 0, 0, 0)
    return (os.path.realpath(path), st.st_ino, st.st_ctime_ns, st.st_size)


@dataclass
class Source:
    """Merged bootstrap data and the origin (``file:line``) of each path."""

    data: dict[str, Any]
    origins: dict[Path, str] = field(default_factory=dict)
    files_seen: dict[str, FileSignature] = field(default_factory=dict)
    """Each file read, as it was just before it was read: what the config watcher compares
    with, so that a change made while the gateway starts is not missed."""
    notes: list[str] = field(default_factory=list)
    """What the user should know of a config that loads (e.g. a site with no certificate)."""
    names: dict[Path, str] = field(default_factory=dict)
    """How errors show a path that was generated (from the sites file) rather than written."""
    left_out: list[dict[str, str]] = field(default_factory=list)
    """Sites of a sites file left out for their broken files (``site``, ``where``, ``why``)."""
    waiting: list[str] = field(default_factory=list)
    """Listeners a sites file asks for that are not there yet (no certificate)."""
    from_sites: bool = False
    """Expanded from a sites file (whose defaults are a home lab's: one worker)."""

    def where(self, path: Path) -> str | None:
        """The origin of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.origins:
                return self.origins[p]
            p = p[:-1]
        return None


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(key: str) -> str:
    """``statPrefix`` → ``stat_prefix``: protobuf's JSON mapping accepts both spellings."""
    if "_" in key or "." in key or key.startswith("@"):
        return key
    return _CAMEL.sub("_", key).lower()


def _origins(node: yaml.Node, name: str, path: Path, out: dict[Path, str],
             keys: Callable[[str], str]) -> None:
    out[path] = f"{name}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = keys(str(k.value))
            _origins(v, name, path + (key,), out, keys)
            out[path + (key,)] = f"{name}:{k.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _origins(v, name, path + (i,), out, keys)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which protobuf's parser also refuses, and reads
    ``y`` and ``n`` as booleans, as Envoy's YAML parser does (``node: {id: n}`` is not a
    string to Envoy)."""

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for k, _ in node.value:
            key = self.construct_object(k, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", k.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"),
                              list("yYnN"))


def parse(text: str, name: str) -> Source:
    """Parses YAML or JSON text (JSON is read as YAML, as Envoy's loader does for both)."""
    try:
        data = yaml.load(text, Loader=_Loader)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: unable to parse as YAML or JSON: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{name}:1: the bootstrap must be a mapping (a YAML/JSON object)"])
    # A sites file's keys are names (hosts, headers, users), not protobuf fields: as written.
    sites = "sites" in data and "static_resources" not in data
    origins: dict[Path, str] = {}
    if node is not None:
        _origins(node, name, (), origins, str if sites else snake)
    return Source(data if sites else _snake_keys(data), origins)


def _snake_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {snake(str(k)): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def merge(base: Any, over: Any) -> Any:
    """Protobuf MergeFrom on plain data: messages merge, repeated fields append, scalars replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + over
    return over


def merge_sources(base: Source, over: Source) -> Source:
    """Merges ``over`` into ``base`` and keeps the origins of both (appended items shift)."""
    origins = dict(base.origins)
    shifted: dict[Path, str] = {}
    for path, where in over.origins.items():
        shifted[_shift(path, base.data, over.data)] = where
    origins.update(shifted)
    return Source(merge(base.data, over.data), origins, {**base.files_seen, **over.files_seen},
                  base.notes + over.notes, base.names, base.left_out + over.left_out,
                  base.waiting + over.waiting, base.from_sites)


def _shift(path: Path, base: Any, over: Any) -> Path:
    """Maps a path in ``over`` to its path after merging: list indices move past base's items."""
    out: list[str | int] = []
    for part in path:
        if isinstance(part, int) and isinstance(over, list):
            offset = len(base) if isinstance(base, list) else 0
            out.append(part + offset)
            base = None
            over = over[part] if part < len(over) else None
        else:
            out.append(part)
            base = base.get(part) if isinstance(base, dict) else None
            over = over.get(part) if isinstance(over, dict) else None
    return tuple(out)


def load(config_path: str | None, config_yaml: str | None,
         compile_file: Callable[[Source], Source] | None = None) -> Source:
    """Reads ``-c`` and ``--config-yaml`` as Envoy does; either may be absent, not both.
    ``compile_file`` turns the ``-c`` file into a bootstrap first (the sites file)."""
    if not config_path and not config_yaml:
        raise ConfigError(["no configuration given: use -c FILE and/or --config-yaml TEXT"])
    src: Source | None = None
    if config_path:
        seen = file_signature(config_path)
        try:
            with open(config_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError([f"unable to read file: {config_path}: {e.strerror}"]) from None
        src = parse(text, config_path)
        src.files_seen[config_path] = seen
        if compile_file is not None:
            src = compile_file(src)
    if config_yaml:
        over = parse(config_yaml, "--config-yaml")
        src = over if src is None else merge_sources(src, over)
    assert src is not None
    return src
