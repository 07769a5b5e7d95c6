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
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score a model against its baseline (STSb, NLI triplets, held-out retrieval) and write a report",
        description="Score MODEL_DIR and a baseline on the STS benchmark, NLI triplets and the held-out pairs of a"
        " corpus; write report.json, report.md, metrics.png and heatmap.png to --out.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the trained model folder")
    parser.add_argument(
        "--baseline",
        metavar="MODEL_DIR",
        help="the model to compare with (default: base_model of MODEL_DIR/train_config.json, else the packaged model)",
    )
    parser.add_argument("--corpus", metavar="CORPUS_DIR", help="a built corpus: retrieval on each dataset's heldout/ split")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets of --corpus")
    parser.add_argument("--stsb", nargs="+", default=[], metavar="FILE", help="original STSb files, e.g. sts-dev.csv")
    parser.add_argument(
        "--nli",
        nargs="+",
        default=[],
        metavar="FILE",
        help="NLI inputs: SNLI/MultiNLI .jsonl, a SentEval folder or s1.* file, or a corpus dataset folder of triplets",
    )
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="the report folder")
    parser.add_argument("--max-heldout", type=int, default=10_000, metavar="N",
                        help="read at most N held-out rows per dataset, the first in shard order (0: all; default 10000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cpu, cuda... (default: a GPU when one is visible)")
    parser.add_argument("--heatmap-pairs", type=int, default=8, metavar="N", help="held-out pairs in heatmap.png")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="a metric dropping by more than this makes the verdict 'worse' (default 0.01)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvalConfig, evaluate_model

    config = EvalConfig(
        stsb=tuple(args.stsb),
        nli=tuple(args.nli),
        corpus=args.corpus,
        datasets=tuple(args.datasets) if args.datasets else None,
        max_heldout_rows=args.max_heldout or None,
        batch_size=args.batch_size,
        device=args.device,
        heatmap_pairs=args.heatmap_pairs,
        regression_tolerance=args.tolerance,
        show_progress=not args.no_progress,
    )
    report = evaluate_model(args.model_dir, args.baseline, config, args.out)
    width = max((len(row["name"]) for row in report["metrics"]), default=6)
    print(f"{'metric':<{width}}  {'model':>8}  {'baseline':>8}  {'delta':>8}")
    for row in report["metrics"]:
        values = [f"{v:>8.4f}" if v is not None else f"{'n/a':>8}" for v in (row["model"], row["baseline"])]
        delta = f"{row['delta']:>+8.4f}" if row["delta"] is not None else f"{'n/a':>8}"
        print(f"{row['name']:<{width}}  {values[0]}  {values[1]}  {delta}")
    print(f"verdict: {report['summary']['verdict']} (baseline: {report['baseline']['path']}); report in {args.out}")
    return 0


# --- end evaluate -------------------------------------------------------------

# --- run + verify (owner: flows) ----------------------------------------------
# --- end run + verify ---------------------------------------------------------

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    _add_evaluate,
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
