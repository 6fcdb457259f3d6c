"""Shared command line for every job: ``--config file.yaml key=value ...``, ``--help``, clean errors.

Jobs stay thin: they call ``parse_job_config`` and hand the typed config to the library. User
mistakes (``UserError`` subclasses: bad config, malformed data) print one clear line, never a trace.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, TypeVar

from ray_rm.config import ConfigError, describe, load_config, to_dict
from ray_rm.errors import UserError

T = TypeVar("T")


def parse_job_config(cls: type[T], argv: list[str] | None, description: str, extra_help: str = "") -> T:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("settings (override any with key=value; lists take a,b,c):\n" + describe(cls)
                + ("\n\n" + extra_help if extra_help else "")),
    )
    parser.add_argument("--config", help="YAML file with the settings below, grouped by section")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-5")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        sys.exit(0)
    return cfg


def run_job(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's main; user errors exit 2 with one readable line instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
