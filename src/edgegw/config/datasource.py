"""Envoy's DataSource (config.core.v3.DataSource): the bytes a config names by file, inline
string or inline base64 (certificates, keys, htpasswd users, response bodies, log formats)."""

from __future__ import annotations

import base64

from .model import DataSource


class DataSourceError(Exception):
    """A DataSource that cannot be read; the text says which and why."""


def read(ds: DataSource) -> bytes:
    """The bytes of an Envoy DataSource (a file, an inline string or base64 inline bytes)."""
    if ds.filename is not None:
        try:
            with open(ds.filename, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataSourceError(f"unable to read file '{ds.filename}': {e.strerror}") from None
    if ds.inline_string is not None:
        return ds.inline_string.encode()
    try:
        return base64.b64decode(ds.inline_bytes or "", validate=True)
    except ValueError:
        raise DataSourceError("inline_bytes is not valid base64") from None


def path_of(ds: DataSource) -> str:
    """The file a DataSource names, or ``<inline>`` (as Envoy's /certs shows it)."""
    return ds.filename if ds.filename is not None else "<inline>"


def describe(ds: DataSource) -> str:
    return f"'{ds.filename}'" if ds.filename is not None else "<inline>"
