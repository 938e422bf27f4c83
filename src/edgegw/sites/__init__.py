"""The sites file: a home lab's sites in a few lines, compiled to the same Envoy model.

A ``-c`` file with a top-level ``sites:`` is a sites file (edgegw-only). It is checked on its
own terms (errors name its fields and lines, with a suggestion for a near-miss name), then
expanded to an Envoy bootstrap (``edgegw expand FILE`` prints it), which is loaded and
checked like any other; a problem found there still points at the site's line. The
certificate directory is part of the input: a certificate dropped in for a site that had none
reloads the config, and the site is served. A site whose files are broken (see ``inputs``) is
left out and the others are served; its files are watched, and it is served once they are
fixed.
"""

from __future__ import annotations

import difflib

from pydantic import ValidationError

from ..config import ConfigError, validation_problems
from ..config.source import Source, file_signature
from ..config.source import load as load_source
from .build import Expansion, expand
from .model import SitesFile, SitesMsg

__all__ = ["is_sites", "compile_sites", "load", "Expansion"]


ENVOY_ONLY = frozenset(("static_resources", "dynamic_resources", "node", "overload_manager",
                        "layered_runtime", "stats_sinks"))
"""Top-level fields of Envoy's bootstrap that a sites file does not have (both have
``admin``)."""


def is_sites(data: dict) -> bool:
    """A sites file has ``sites:``, or (misspelled) has no field of Envoy's bootstrap but
    one of its own: then its errors speak of the sites file (``site:`` → did you mean
    'sites'?), not of Envoy's listeners."""
    keys = set(data)
    if "static_resources" in keys or "dynamic_resources" in keys:
        return False
    if "sites" in keys:
        return True
    if keys & ENVOY_ONLY:
        return False
    return bool(keys & (set(SitesFile.model_fields) - {"admin"})) or any(
        difflib.get_close_matches(str(k), ["sites"], cutoff=0.8) for k in keys)


def compile_sites(src: Source) -> Source:
    """A parsed ``-c`` file as a bootstrap: itself, or its sites expanded."""
    if not is_sites(src.data):
        return src
    try:
        sites = SitesFile.model_validate(src.data)
    except ValidationError as e:
        raise ConfigError(validation_problems(e, src, SitesMsg,
                                              "is not a sites file field")) from None
    out = expand(sites, lambda path: src.where(path) or "")
    files_seen = dict(src.files_seen)
    for path in (sites.certificates, *out.watch):
        files_seen[path] = file_signature(path)
    return Source(out.bootstrap, out.origins, files_seen, src.notes + out.notes, out.names,
                  out.left_out, out.waiting, from_sites=True)


def load(config_path: str | None, config_yaml: str | None) -> Source:
    """``-c`` (a bootstrap or a sites file) with ``--config-yaml`` merged over it."""
    return load_source(config_path, config_yaml, compile_sites)
