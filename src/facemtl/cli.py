"""The one ``facemtl`` command.

Each subcommand lives next to the code it drives and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace, returns an
exit status). Add a module to ``COMMAND_MODULES`` to add a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from facemtl import __version__
from facemtl.errors import FacemtlError

COMMAND_MODULES: tuple[str, ...] = (
    "facemtl.data.synth_cli",
    "facemtl.engine.cli",
    "facemtl.inference.cli",
    "facemtl.experiments.cli",
    "facemtl.experiments.reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facemtl",
        description="Integrated multi-task face analytics (iFAN, Deep Collaboration).",
    )
    parser.add_argument("--version", action="version", version=f"facemtl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser ``args`` went through: its usage is the one an error
    about that command's arguments should show (argparse itself shows the top level's)."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = None if sub is None else getattr(args, sub.dest, None)
        if name not in getattr(sub, "choices", {}):
            return parser
        parser = sub.choices[name]


def main(argv: list[str] | None = None) -> int:
    try:  # building the parser imports the subcommands: a Ctrl-C there is an interruption too
        parser = build_parser()
        try:
            args, unknown = parser.parse_known_args(argv)
            if unknown:
                _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
        except SystemExit:  # --help, --version, a usage error: flush here, where a closed pipe is caught
            sys.stdout.flush()
            raise
        if not getattr(args, "func", None):
            parser.print_help()
            status = 2
        else:
            from facemtl.data.images import quiet_opencv

            quiet_opencv()
            status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except FacemtlError as exc:
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemtl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`facemtl predict ... | head`): stop quietly, like other Unix tools;
        # point stdout at /dev/null so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer


if __name__ == "__main__":
    raise SystemExit(main())
