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
def _add_mine(sub: argparse._SubParsersAction) -> None:
    from pipeline.mining import add_mine_arguments

    parser = sub.add_parser("mine", help="mine hard negatives for a pair dataset with FAISS (triplet shards out)")
    add_mine_arguments(parser)
    parser.set_defaults(run=_run_mine)


def _run_mine(args: argparse.Namespace) -> int:
    from pipeline.mining import mine_command

    return mine_command(args)


# --- end mine -----------------------------------------------------------------

# --- config + train (owner: sampling/train) -----------------------------------
def _add_config(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="write data_config.json: a sampling weight for each dataset of a corpus")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    parser.add_argument("--out", type=Path, default=Path("data_config.json"), help="where to write (default: %(default)s)")
    parser.add_argument(
        "--policy",
        choices=["proportional", "temperature", "uniform", "explicit"],
        default="proportional",
        help="weights proportional to size, to size**alpha, all equal, or as given with --weight (default: %(default)s)",
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="temperature policy: weight ~ lines**alpha (alpha = 1/T)")
    parser.add_argument("--size-cap", type=int, help="count datasets larger than this many lines as this size (T5's K)")
    parser.add_argument("--scale", type=int, default=1000, help="the weight of the heaviest dataset (default: %(default)s)")
    parser.add_argument("--min-weight", type=int, default=1, help="the least weight (default: %(default)s)")
    parser.add_argument("--max-weight", type=int, help="the most weight any dataset gets")
    parser.add_argument("--weight", action="append", default=[], metavar="NAME=W", help="explicit policy: a dataset's weight")
    parser.add_argument("--default-weight", type=int, help="explicit policy: weight of datasets not given with --weight")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="leave out datasets (name or glob)")
    parser.add_argument(
        "--keep-unmined", action="store_true", help="keep a pair dataset even when its mined version is in the corpus"
    )
    parser.add_argument("--check", type=Path, metavar="CONFIG", help="only validate CONFIG against CORPUS_DIR; write nothing")
    parser.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from pipeline.sampling import WeightPolicy, load_data_config, meta_path, write_data_config

    if args.check:
        entries = load_data_config(args.check, corpus_dir=args.corpus_dir)
        print(f"{args.check}: {len(entries)} entries, valid against {args.corpus_dir}")
        return 0
    weights = {}
    for item in args.weight:
        name, sep, value = item.rpartition("=")
        if not sep or not value.isdigit():
            return _fail(f"--weight takes NAME=POSITIVE_INTEGER, got {item!r}")
        weights[name] = int(value)
    policy = WeightPolicy(
        kind=args.policy,
        alpha=args.alpha,
        size_cap=args.size_cap,
        scale=args.scale,
        min_weight=args.min_weight,
        max_weight=args.max_weight,
        weights=weights,
        default_weight=args.default_weight,
        exclude=tuple(args.exclude),
        prefer_mined=not args.keep_unmined,
    )
    entries = write_data_config(args.corpus_dir, args.out, policy)
    total = sum(e["weight"] for e in entries)
    width = max(len(e["name"]) for e in entries)
    for entry in entries:
        print(f"{entry['name']:<{width}}  lines {entry['lines']:>10,}  weight {entry['weight']:>6}  share {entry['weight'] / total:6.1%}")
    print(f"wrote {args.out} ({len(entries)} datasets, policy {args.policy}) and {meta_path(args.out)}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from pipeline.train import TrainConfig

    defaults = TrainConfig()
    parser = sub.add_parser("train", help="train a sentence-embedding model on a corpus, batches drawn by data_config.json weights")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    parser.add_argument("--config", type=Path, required=True, help="the data_config.json to sample by")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--model", help="start model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, help=f"rows per batch per device (default: {defaults.batch_size})")
    parser.add_argument("--epochs", type=float, help=f"passes over the data (default: {defaults.epochs})")
    parser.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default: as many as the data fills once)")
    parser.add_argument("--lr", dest="learning_rate", type=float, help=f"peak learning rate (default: {defaults.learning_rate})")
    parser.add_argument("--warmup-steps", type=int, help=f"linear warmup, at most 10%% of steps (default: {defaults.warmup_steps})")
    parser.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default: {defaults.weight_decay})")
    parser.add_argument("--max-seq-length", type=int, help=f"tokens per text (default: {defaults.max_seq_length})")
    parser.add_argument("--loss", choices=["mnrl", "cached_mnrl"], help="MultipleNegativesRankingLoss or its cached version")
    parser.add_argument("--scale", type=float, help=f"loss similarity scale (default: {defaults.scale})")
    parser.add_argument("--mini-batch-size", type=int, help=f"cached_mnrl mini-batch (default: {defaults.mini_batch_size})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default auto: bf16 on a GPU that has it")
    parser.add_argument("--device", choices=["cpu"], help="force the CPU (default: the GPU when there is one)")
    parser.add_argument("--seed", type=int, help=f"seed (default: {defaults.seed})")
    parser.add_argument("--grad-accum", dest="gradient_accumulation_steps", type=int, help="batches per optimizer step")
    parser.add_argument("--save-steps", type=int, help=f"steps between checkpoints (default: {defaults.save_steps})")
    parser.add_argument("--save-total-limit", type=int, help=f"checkpoints kept (default: {defaults.save_total_limit})")
    parser.add_argument("--logging-steps", type=int, help=f"steps between logged losses (default: {defaults.logging_steps})")
    parser.add_argument("--workers", dest="dataloader_num_workers", type=int, help="DataLoader workers (default: 0)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", default=None, help="ignore existing checkpoints")
    parser.add_argument(
        "--options-json", metavar="JSON",
        help="TrainConfig fields as a JSON object, e.g. '{\"max_steps\": 20, \"pooling\": \"cls\"}'; the flags above override it"
        " (the training launcher passes the whole config this way)",
    )  # fmt: skip
    parser.add_argument(
        "--summary-json", type=Path, metavar="PATH",
        help="also write the run's summary as JSON to PATH (from the main process only under torchrun)",
    )  # fmt: skip
    parser.set_defaults(run=_run_train)


def _train_options(text: str | None):
    """The TrainConfig that ``--options-json`` describes (the defaults when not given)."""
    import dataclasses
    import json

    from pipeline.train import TrainConfig

    if text is None:
        return TrainConfig()
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options-json is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options-json must be a JSON object of TrainConfig fields, got {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"--options-json: unknown TrainConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TrainConfig(**options)


def _run_train(args: argparse.Namespace) -> int:
    from pipeline.shards import atomic_write_json
    from pipeline.train import config_from_overrides, is_main_process, train_model

    fields = (
        "model", "batch_size", "epochs", "max_steps", "steps_per_epoch", "learning_rate", "warmup_steps", "weight_decay",
        "max_seq_length", "loss", "scale", "mini_batch_size", "precision", "device", "seed", "gradient_accumulation_steps",
        "save_steps", "save_total_limit", "logging_steps", "dataloader_num_workers", "resume",
    )  # fmt: skip
    config = config_from_overrides(_train_options(args.options_json), **{name: getattr(args, name) for name in fields})
    summary = train_model(args.corpus_dir, args.config, args.out, config)
    if not is_main_process():
        return 0  # under torchrun, rank 0 reports for every process
    if args.summary_json is not None:
        atomic_write_json(args.summary_json, summary)
    if summary["skipped"]:
        print(f"{args.out} already holds this run (config hash {summary['config_hash'][:12]}): nothing to do")
    else:
        resumed = f", resumed from {summary['resumed_from']}" if summary["resumed_from"] else ""
        loss = (
            f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}" if summary["loss_first"] is not None else "no loss logged"
        )
        print(
            f"trained {summary['steps']} steps, {summary['examples']:,} examples, {loss},"
            f" {summary['seconds']:.1f} s{resumed}; model in {summary['out_dir']}"
        )
    return 0


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
# The one place outside flows/ that imports flows (lazily): the library stays Prefect-free.
def _add_run(sub: argparse._SubParsersAction) -> None:
    from flows.commands import add_run_arguments

    parser = sub.add_parser("run", help="the main job: build the corpus, mine, write the config, train and evaluate (Prefect flow)")
    add_run_arguments(parser)
    parser.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from flows.commands import run_command

    return run_command(args)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    from flows.commands import add_verify_arguments

    parser = sub.add_parser("verify", help="rebuild a corpus in a temporary folder and check it is byte-identical")
    add_verify_arguments(parser)
    parser.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from flows.commands import verify_command

    return verify_command(args)


# --- end run + verify ---------------------------------------------------------

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    _add_mine,
    _add_evaluate,
    _add_config,
    _add_train,
    _add_run,
    _add_verify,
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
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
