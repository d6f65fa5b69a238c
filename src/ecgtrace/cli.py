"""The ``ecgtrace`` command. Each subcommand lives in ``ecgtrace/commands/<name>.py``.

A command module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and
returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from loguru import logger

from ecgtrace.errors import EcgTraceError

#: Subcommand modules, in the order ``ecgtrace --help`` lists them.
COMMANDS = (
    "demo", "synth", "contact_sheet", "train", "check", "stage0", "stage1", "stage2",
    "digitize", "predict", "evaluate", "models", "export", "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgtrace",
        description="Digitize 12-lead paper ECG pictures, and train and check the models that do it.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ecgtrace.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ecgtrace.commands.{name}":  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ecgtrace`` console script."""
    logger.remove()
    logger.add(sys.stderr, format="[{time:HH:mm:ss}] {message}", level=os.environ.get("ECGTRACE_LOG", "INFO"))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (EcgTraceError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError) as e:
        if args.debug or os.environ.get("ECGTRACE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ecgtrace: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecgtrace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
