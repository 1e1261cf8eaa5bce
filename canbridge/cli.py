"""The `canbridge` command line.

Imports are lazy: `canbridge status` must not pay for cantools, and `run` imports only what
a pipeline needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from canbridge.config import PipelineConfig
    from canbridge.registry import Registry

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

PLUGINS_ENV = "CANBRIDGE_PLUGINS"
"""Comma-separated module names loaded as extra plugins without installing them (for
developing a plugin, and for tests)."""


def _parser() -> argparse.ArgumentParser:
    from canbridge import __version__

    parser = argparse.ArgumentParser(
        prog="canbridge",
        description="Bridge a battery BMS to a solar inverter over CAN.")
    parser.add_argument("--version", action="version", version=f"canbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline until stopped, --duration, or the end of "
                         "every replay")
    run.add_argument("pipeline", metavar="PIPELINE")
    run.add_argument("--duration", type=float, metavar="SECS",
                     help="stop after SECS seconds of pipeline time")
    run.add_argument("--dry-run", action="store_true",
                     help="decode and compute everything, transmit nothing on CAN")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="override the [log] level")

    validate = sub.add_parser("validate", help="check a pipeline file, its graph and options")
    validate.add_argument("pipeline", metavar="PIPELINE")

    config = sub.add_parser("config", help="print the effective configuration, defaults "
                            "filled in, as TOML")
    config.add_argument("pipeline", metavar="PIPELINE")

    doctor = sub.add_parser("doctor", help="commission a Pi: check the CAN links, listen on "
                            "every bus, the broker, folders and service; a line and a next step "
                            "per check")
    doctor.add_argument("pipeline", nargs="?", default="/etc/canbridge/pipeline.toml",
                        metavar="PIPELINE")
    doctor.add_argument("--listen", type=float, default=3.0, metavar="SECS",
                        help="how long to listen on the buses (default 3)")

    sub.add_parser("plugins", help="list plugins and the component types they provide")

    dbc = sub.add_parser("dbc", help="list the DBC files, or show one's frames and signals")
    dbc.add_argument("action", nargs="?", choices=("show",))
    dbc.add_argument("name", nargs="?", metavar="NAME|PATH")

    status = sub.add_parser("status", help="health of the running pipeline")
    status.add_argument("pipeline", nargs="?", metavar="PIPELINE",
                        help="pipeline file whose [status] file to read")
    status.add_argument("--file", help="status file to read")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        from canbridge.status import status_command

        return status_command(args.file, args.pipeline, args.json)
    if args.command != "run":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": _run, "validate": _validate, "config": _config, "plugins": _plugins,
                "doctor": _doctor,
                "dbc": _dbc}
    try:
        return commands[args.command](args)
    except BrokenPipeError:
        # `canbridge plugins | head`: the reader left; stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def load_registry(*, lazy: bool = False) -> Registry:
    """Every installed plugin plus those named in $CANBRIDGE_PLUGINS (`lazy`: an installed
    one is imported when the pipeline names one of its types)."""
    import importlib

    from canbridge import registry

    extra: list[ModuleType] = []
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            extra.append(importlib.import_module(name))
        except Exception as exc:
            registry.log.error("plugin %r (from $%s) skipped: failed to import: %r", name,
                               PLUGINS_ENV, exc)
    return registry.load_registry(tuple(extra), lazy=lazy)


def _load(path: str, out: TextIO | None = None) -> PipelineConfig | None:
    from canbridge.config import ConfigError, load_pipeline

    out = out or sys.stderr
    try:
        config = load_pipeline(path, load_registry(lazy=True))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        errors = sum(not p.warning for p in exc.problems)
        print(f"{path}: {errors} problem{'s' if errors != 1 else ''} found", file=out)
        return None
    for problem in config.warnings:
        print(problem, file=out)
    return config


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.pipeline)
    if config is None:
        return EXIT_CONFIG
    print(f"{args.pipeline}: ok ({len(config.buses)} buses, {len(config.components)} components"
          f", {len(config.forwards)} forwards)")
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    import tomli_w

    config = _load(args.pipeline)
    if config is None:
        return EXIT_CONFIG
    sys.stdout.write(tomli_w.dumps(config.effective()))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from canbridge.logs import setup_logging

    setup_logging({}, args.log_level)  # defaults until the pipeline's [log] table is read
    config = _load(args.pipeline)
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.tables["log"], args.log_level)
    from canbridge.engine import Engine
    from canbridge.systemd import Notifier

    notifier = Notifier.from_environment(
        max_stale_secs=config.tables["watchdog"]["max_stale_secs"])
    engine = Engine(config, dry_run=args.dry_run, duration=args.duration, notifier=notifier)

    def on_signal(signum: int, frame: object) -> None:
        del frame
        name = signal.Signals(signum).name
        if engine.stopping:
            logging.getLogger("canbridge").warning("second %s: exiting now", name)
            os._exit(EXIT_FAILURE)
        logging.getLogger("canbridge").info("%s received: stopping", name)
        engine.request_stop()

    # SIGHUP (a closed terminal, or `kill -HUP`) stops cleanly too: canbridge holds no
    # configuration to reload, and dying without cleanup would lose data-log rows and leave
    # the status "running" and MQTT without "offline".
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        return engine.run()
    except Exception as exc:
        logging.getLogger("canbridge").critical("stopped by an internal error: %r", exc,
                                                exc_info=logging.getLogger().isEnabledFor(
                                                    logging.DEBUG))
        return EXIT_FAILURE


def _doctor(args: argparse.Namespace) -> int:
    from canbridge.doctor import doctor
    from canbridge.logs import setup_logging

    setup_logging({"level": "error"}, None)  # the checklist speaks; the engine keeps quiet
    config = _load(args.pipeline)
    if config is None:
        return EXIT_CONFIG
    return doctor(config, sys.stdout, listen_secs=args.listen)


def _plugins(args: argparse.Namespace) -> int:
    from canbridge import profiles
    from canbridge.schema import describe_default

    del args
    registry = load_registry()
    for plugin in registry.plugins:
        if plugin.error:
            print(f"{plugin.name} ({plugin.module}) BROKEN: {plugin.error}")
            continue
        print(f"{plugin.name} ({plugin.module} {plugin.version})"
              f"{f' WARNING: {plugin.warning}' if plugin.warning else ''}")
        for type_name, cls in sorted(registry.types.items()):
            if registry.owner[type_name] != plugin.name:
                continue
            print(f"  {cls.kind} {type_name!r}: {cls.summary}")
            for option in cls.schema():
                print(f"    {option.name} = {describe_default(option)}  "
                      f"({option.kind.describe()}) {option.help}")
    print("inverter profiles (inverter = NAME on an inverter sink):")
    for name in profiles.names():
        profile = profiles.load(name)
        sets = ", ".join(f"{key} = {value!r}" for key, value in profile.options.items())
        print(f"  {name}: {profile.inverters}; {profile.special}"
              f"{f' (sets {sets})' if sets else ''}")
    return EXIT_FAILURE if registry.broken else EXIT_OK


def _dbc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from canbridge.databases import dbc_problem, load_dbc, parse_dbc
    from canbridge.dbcshow import describe_database

    registry = load_registry()
    files = {path.stem: path for path in registry.dbc_files}
    if args.action is None:
        broken = 0
        for name, path in sorted(files.items()):
            problem = dbc_problem(path)
            if problem is None:
                print(f"{name}: {len(load_dbc(path).messages)} frames  {path}")
            else:
                broken += 1
                print(f"{name}: BROKEN: {problem}")
        return EXIT_FAILURE if broken else EXIT_OK
    path = files.get(args.name)
    if path is None and (Path(args.name).is_file() or args.name.endswith(".dbc")):
        path = Path(args.name)  # a file an author is writing, before it is packaged
    if path is None:
        from canbridge.schema import did_you_mean

        print(f"canbridge dbc: no DBC named {args.name!r}{did_you_mean(args.name or '', files)}; "
              f"known: {', '.join(sorted(files)) or 'none'} (or give a file path)",
              file=sys.stderr)
        return EXIT_CONFIG
    problem = dbc_problem(path)
    if problem is not None:
        print(f"canbridge dbc: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(describe_database(parse_dbc(path)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
