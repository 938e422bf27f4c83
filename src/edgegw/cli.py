"""The command line, with Envoy's flags and Envoy's exit codes and messages."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from . import __version__, log
from .config import ConfigError, from_source
from .sites import load

_log = log.get("main")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgegw", description="Edge TLS gateway configured with Envoy's v3 bootstrap.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "other commands:\n"
            "  edgegw expand SITES_FILE      print the Envoy bootstrap a sites file stands for\n"
            "  edgegw certs list -c CONFIG   the certificates on disk and what is served\n"
            "  edgegw certs dev NAME...      a local dev CA and certificates for the names"))
    p.add_argument("-c", "--config-path", help="path to the bootstrap file (YAML or JSON), "
                   "or a sites file (a top-level 'sites:')")
    p.add_argument("--config-yaml", help="bootstrap YAML merged over --config-path "
                   "(protobuf MergeFrom: scalars replace, messages merge, lists append)")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve",
                   help="validate: check the config (and the files it names) and exit")
    p.add_argument("-l", "--log-level", default="info",
                   help="trace, debug, info, warning, error, critical or off")
    p.add_argument("--component-log-level", default="",
                   help="per component levels, e.g. upstream:debug,connection:trace")
    p.add_argument("--log-path", help="write application logs to this file instead of stderr")
    p.add_argument("--concurrency", type=int,
                   help="worker processes (default: one per core, as Envoy; one for a sites "
                        "file, which a home lab's traffic fills a small part of); 1 runs a "
                        "single process")
    p.add_argument("--cpuset-threads", action="store_true",
                   help="without --concurrency, one worker per CPU this process may run on "
                        "(its cpuset, as in a container limited to some CPUs) instead of per "
                        "CPU of the machine, as Envoy")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--admin-socket", help=argparse.SUPPRESS)
    p.add_argument("--drain-time-s", type=float, default=600,
                   help="on SIGTERM, how long open connections may take to finish (seconds)")
    p.add_argument("--drain-strategy", choices=("gradual", "immediate"), default="gradual",
                   help="how /drain_listeners drains connections, as Envoy: gradual spreads "
                        "their closing over the drain time, immediate closes them at once")
    p.add_argument("--service-node", help="overrides node.id")
    p.add_argument("--service-cluster", help="overrides node.cluster")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["expand"]:
        sys.exit(expand(argv[1:]))
    if argv[:1] == ["certs"]:
        from .certs_cli import main as certs

        sys.exit(certs(argv[1:]))
    args = parser().parse_args(argv)
    if args.version:
        from .admin import version

        print(f"edgegw version: {version()}")
        return
    try:
        level = log.parse_level(args.log_level)
        components = log.parse_component_levels(args.component_log_level)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    log.setup(level, components, args.log_path)
    override = _node_override(args)
    try:
        src = load(args.config_path, _merge_yaml(args.config_yaml, override))
        boot = from_source(src)
    except ConfigError as e:
        for p in e.problems:  # each once, in Envoy's shape, validating or serving
            _log.critical("error initializing configuration '%s': %s",
                          args.config_path or "--config-yaml", p)
        sys.exit(1)
    for note in src.notes:
        _log.warning("%s", note)
    if args.mode == "validate":
        print(f"configuration '{args.config_path or '--config-yaml'}' OK")
        return
    if args.concurrency is None:
        args.concurrency = 1 if src.from_sites else (
            len(os.sched_getaffinity(0)) if args.cpuset_threads else os.cpu_count()) or 1
    if args.concurrency < 1:
        _log.critical("--concurrency must be at least 1")
        sys.exit(1)
    if args.concurrency > 1 and args.worker is None:
        _supervise(boot, argv, args)
        return
    if args.worker is not None:
        from .workers import die_with_parent

        die_with_parent()
    config_yaml = _merge_yaml(args.config_yaml, override)

    def loader(xds=None):
        """The same files and flags again, for a config reload, with what a control plane
        gave (``xds``)."""
        src = load(args.config_path, config_yaml)
        return from_source(src, xds), src.data

    _serve(boot, vars(args), src.data, loader)


def expand(argv: list[str]) -> int:
    """``edgegw expand SITES_FILE``: the Envoy bootstrap a sites file stands for, on stdout
    (what ``envoy -c`` would run); problems on stderr and exit 1."""
    import yaml

    p = argparse.ArgumentParser(prog="edgegw expand",
                                description="Print the Envoy bootstrap a sites file expands to.")
    p.add_argument("sites_file")
    args = p.parse_args(argv)
    try:
        src = load(args.sites_file, None)
        from_source(src)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"# Envoy bootstrap expanded by edgegw {__version__} from {args.sites_file}")
    for note in src.notes:
        print(f"# note: {note}")
    print(yaml.safe_dump(src.data, sort_keys=False, width=100), end="")
    return 0


def _node_override(args: argparse.Namespace) -> str | None:
    node = {}
    if args.service_node:
        node["id"] = args.service_node
    if args.service_cluster:
        node["cluster"] = args.service_cluster
    if not node:
        return None
    import json

    return json.dumps({"node": node})


def _merge_yaml(config_yaml: str | None, override: str | None) -> str | None:
    if override is None:
        return config_yaml
    if config_yaml is None:
        return override
    import yaml

    from .config.source import merge

    return yaml.safe_dump(merge(yaml.safe_load(config_yaml) or {}, yaml.safe_load(override)))


def _run(main) -> None:
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        _log.warning("uvloop is not installed: running on the default asyncio loop")
    try:
        run(main)
    except OSError as e:
        _log.critical("cannot start: %s", e)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def _supervise(boot, argv: list[str], args: argparse.Namespace) -> None:
    """--concurrency N > 1: a supervisor and N workers, each given the same command line."""
    from .workers import Supervisor

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--concurrency":
            skip = True
        elif not a.startswith("--concurrency="):
            rest.append(a)
    rest += ["--concurrency", str(args.concurrency)]
    _run(Supervisor(boot, rest, args.concurrency, vars(args)).run())


def _serve(boot, options, raw, loader) -> None:
    from .server import Server

    _run(Server(boot, options, raw, loader).run())
