"""Shared command line for every job: ``--config file.yaml key=value ...``, ``--help``, clean errors.

Jobs stay thin: they call ``parse_job_config`` and hand the typed config to the library. User
mistakes (``UserError`` subclasses: bad config, malformed data) print one clear line, never a trace.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from typing import Callable, TypeVar

from ray_rm.config import ConfigError, describe, load_config, to_dict
from ray_rm.errors import UserError

T = TypeVar("T")

# "section.key=value": how an override looks, so one swallowed by a multi-value option can be recovered.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def parse_job_config(cls: type[T], argv: list[str] | None, description: str, extra_help: str = "") -> T:
    return parse_job_args(cls, argv, description, extra_help=extra_help)[0]


def parse_job_args(cls: type[T], argv: list[str] | None, description: str, extra_help: str = "",
                   add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                   ) -> tuple[T, argparse.Namespace]:
    """Like ``parse_job_config`` for jobs with options of their own (``add_arguments`` adds them).

    A multi-value option (``nargs="+"``) swallows the overrides typed after it
    (``--data a.jsonl data.limit=10``); values shaped like ``section.key=value`` move back to the overrides."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("settings (override any with key=value; lists take a,b,c):\n" + describe(cls)
                + ("\n\n" + extra_help if extra_help else "")),
    )
    parser.add_argument("--config", default=None,
                        help="YAML file with the settings below, grouped by section (default: none, i.e. the "
                             "defaults listed below)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-5")
    verbose_key = _add_verbose_flag(parser, cls)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if verbose_key and args.verbose:
        args.overrides = list(args.overrides) + [f"{verbose_key}=true"]
    for name, value in vars(args).items():
        if name != "overrides" and isinstance(value, list):
            stray = [v for v in value if isinstance(v, str) and _OVERRIDE.match(v)]
            if stray:
                setattr(args, name, [v for v in value if v not in stray])
                args.overrides = stray + list(args.overrides)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        sys.exit(0)
    return cfg, args


def _add_verbose_flag(parser: argparse.ArgumentParser, cls: type) -> str | None:
    """``--verbose``: shorthand for ``ray.verbose=true`` in jobs whose config has a ``ray`` section; the help text
    is the schema's. Returns the dotted key it sets, or None for jobs without one."""
    import dataclasses

    ray_field = next((f for f in dataclasses.fields(cls) if f.name == "ray"), None)
    if ray_field is None:
        return None
    verbose = next(f for f in dataclasses.fields(ray_field.default_factory) if f.name == "verbose")
    parser.add_argument("--verbose", action="store_true",
                        help=f"same as ray.verbose=true: {verbose.metadata['help']}")
    return "ray.verbose"


def run_job(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's main; user errors exit 2 with one readable line instead of a traceback.

    Ctrl-C (SIGINT) and SIGTERM stop the job cleanly: the local Ray cluster it started is shut down
    (``ray_utils.shutdown_ray``; a joined cluster is left running), also on normal exit and on errors.
    Exit codes: 130 for SIGINT, 143 for SIGTERM, as a shell reports a process killed by them."""
    from ray_rm.ray_utils import install_stop_handler, last_stop_signal, shutdown_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_stop_handler()
    ray_was_connected = _ray_connected()  # a caller's own connection (a notebook, a test session) is not ours to end
    code = 0
    try:
        main(argv)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        signum = last_stop_signal() or signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        code = 128 + signum
    finally:
        if not ray_was_connected:
            _shutdown_quietly(shutdown_ray)
        for signum, handler in handlers_before.items():  # a caller in the same process gets its handlers back
            signal.signal(signum, handler)
    if code:
        sys.exit(code)


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # not imported yet: certainly not connected (and no import cost for --help)
    return ray is not None and ray.is_initialized()


def _shutdown_quietly(shutdown: Callable[[], None]) -> None:
    """Stop Ray even if a second signal arrives while it shuts down (a second Ctrl-C must not leave it half-stopped)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        shutdown()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
