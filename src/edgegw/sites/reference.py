"""``python -m edgegw.sites.reference > docs/reference.md``: the Envoy bootstrap subset and the
sites file, each message and field, from the models themselves."""

from __future__ import annotations

from ..config.model import Bootstrap
from ..config.reference import render
from .model import SitesFile

SECTIONS = (("Envoy bootstrap (the subset edgegw accepts)", Bootstrap),
            ("Sites file (edgegw-only)", SitesFile))


def main() -> None:
    print(render(SECTIONS), end="")


if __name__ == "__main__":
    main()
