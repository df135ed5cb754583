"""The ``gradlens`` command line.

``gradlens --version`` prints the version. Subcommands are registered in
:data:`_COMMANDS` (name -> ``(module, one-line help)``); each module exposes
``add_arguments(parser)`` and a ``run(args) -> int`` entry point.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from gradlens._version import __version__

#: subcommand -> (module, one-line help). Each module defines add_arguments() and run().
_COMMANDS = {
    "report": ("gradlens.report", "diagnose a run from the TensorBoard event files gradlens wrote"),
    "demo": ("gradlens.demo", "train three small networks under gradlens.watch and diagnose them"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlens",
        description="gradlens: look inside backpropagation.",
    )
    parser.add_argument("--version", action="version", version=f"gradlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``gradlens`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # ``gradlens report ... | head``: the reader left, not an error
        try:
            sys.stdout = open(os.devnull, "w")  # silence the flush at interpreter exit
        except OSError:
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
