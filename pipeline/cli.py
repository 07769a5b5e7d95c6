"""The ``pairforge`` command: thin subcommands that call the library.

In: command-line arguments. Out: the library's files, a summary on stdout, an exit
code (0 success, 1 a stage finished with failures, 2 a usage or input error).

Each subcommand only parses its options, calls one library function and prints what
it returned; the work lives in the modules it imports (lazily, so ``pairforge --help``
stays fast).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


def _fail(message: str) -> int:
    print(f"pairforge: error: {message}", file=sys.stderr)
    return 2


# --- ingest (owner: ingest) ---------------------------------------------------
def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from pipeline.ingest import add_ingest_arguments

    parser = sub.add_parser("ingest", help="read raw source files into clean, deduplicated Parquet shards")
    add_ingest_arguments(parser)
    parser.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest import ingest_command

    return ingest_command(args)


# --- end ingest ---------------------------------------------------------------

# --- mine (owner: mining) -----------------------------------------------------
# --- end mine -----------------------------------------------------------------

# --- config + train (owner: sampling/train) -----------------------------------
# --- end config + train -------------------------------------------------------

# --- evaluate (owner: evaluate) -----------------------------------------------
# --- end evaluate -------------------------------------------------------------

# --- run + verify (owner: flows) ----------------------------------------------
# --- end run + verify ---------------------------------------------------------

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    # registered subcommands (keep one line each)
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="pairforge",
        description="Raw text dumps in; sentence-pair corpora, mined negatives, data_config.json and trained models out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pairforge`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("pairforge: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
