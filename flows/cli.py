"""The ``pairforge`` command: every subcommand's arguments and printing, in one place.

In: command-line arguments. Out: the library's files, a summary on stdout, an exit
code (0 success, 1 a stage finished with failures, 2 a usage or input error: one line
on stderr, never a traceback).

A subcommand's config options are generated from the library's config dataclass
(:mod:`flows.config_options`: one option per field, documented by the field's own
docstring), so the library never parses arguments; each subcommand then calls one
library function (or, for ``run`` and ``verify``, one flow) and prints what it
returned. Heavy modules are imported inside the handlers, so ``pairforge --help``
stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from flows.config_options import add_config_options, config_from_args

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr (and a pointer to ``--help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(message: str) -> int:
    print(f"pairforge: error: {message}", file=sys.stderr)
    return 2


# --- ingest -----------------------------------------------------------------------
def _add_ingest(sub: Any) -> None:
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.sources import SOURCES

    parser = sub.add_parser("ingest", help="read raw source files into clean, deduplicated Parquet shards")
    parser.add_argument("source", choices=sorted(SOURCES), help="the source format of the inputs")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files (or SentEval folders)")
    parser.add_argument("--out", required=True, type=Path, help="corpus folder: one subfolder per dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_options(parser, IngestConfig, title="ingest options")
    parser.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest.config import IngestConfig, source_options
    from pipeline.ingest.plan import ingest_source

    config = config_from_args(args, IngestConfig)
    source_options(args.source, config.source_options)  # a wrong -o fails before any reading
    result = ingest_source(args.source, args.inputs, args.out, config, progress=not args.quiet)
    if result.skipped:
        print(f"{args.source}: inputs and config unchanged since the last build; nothing to do.")
    print(ingest_summary(result.manifests))
    quarantined = sum(m["quarantine"]["rows"] for m in result.manifests)
    print(f"\nwritten to {args.out}/ ({len(result.manifests)} datasets; {quarantined:,} quarantined rows)")
    for failure in result.failures:
        print(f"FAILED: {failure['error']}", file=sys.stderr)
    return 1 if result.failures else 0


def ingest_summary(manifests: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of each dataset: read, kept (train / held out), dropped by reason."""
    lines = []
    width = max([len("dataset")] + [len(m["dataset"]) for m in manifests])
    header = f"{'dataset':<{width}} {'unit':<14} {'read':>10} {'kept':>10} {'train':>10} {'heldout':>8}  dropped by reason"
    lines.append(header)
    lines.append("-" * len(header))
    for m in manifests:
        reasons = ", ".join(f"{r}={n:,}" for r, n in sorted(m["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(
            f"{m['dataset']:<{width}} {m['unit']:<14} {m['rows_read']:>10,} {m['rows_kept']:>10,}"
            f" {m['rows_train']:>10,} {m['rows_heldout']:>8,}  {reasons or '-'}"
        )
    return "\n".join(lines)


# --- mine -------------------------------------------------------------------------
def _add_mine(sub: Any) -> None:
    from pipeline.embed.cache import default_cache_dir
    from pipeline.embed.encoders import ENCODER_CHOICES
    from pipeline.mining.config import MiningConfig

    parser = sub.add_parser("mine", help="mine hard negatives for a pair dataset with FAISS (triplet shards out)")
    parser.add_argument("dataset_dir", type=Path, help="a dataset folder with part-*.parquet shards and manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"embedding cache (default: {default_cache_dir()})")
    parser.add_argument("--device", default=None, help="encoder device (default: cuda if a GPU is visible, else cpu)")
    parser.add_argument(
        "--encoder", choices=ENCODER_CHOICES, default="auto",
        help="encoder backend: auto runs plain BERT models in numpy on a CPU (less memory), others in torch;"
        " numpy-mkl / numpy-openblas choose the numpy encoder's matrix products (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="mine even if the output manifest already matches")
    add_config_options(parser, MiningConfig, title="mining options (sentence-transformers' names)")
    parser.set_defaults(run=_run_mine)


def _run_mine(args: argparse.Namespace) -> int:
    from pipeline.mining.config import MiningConfig
    from pipeline.mining.job import mine_negatives

    config = config_from_args(args, MiningConfig)
    manifest = mine_negatives(
        args.dataset_dir, args.out, config, cache_dir=args.cache_dir, device=args.device, force=args.force,
        encoder=args.encoder,
    )  # fmt: skip
    if manifest.get("skipped"):
        return 0
    stats = manifest["mining"]
    skipped = ", ".join(f"{k}={v:,}" for k, v in stats["candidates_skipped"].items() if v) or "none"
    dropped = ", ".join(f"{k}={v:,}" for k, v in manifest["dropped"].items()) or "none"
    print(
        f"mined {args.out}: {manifest['rows_kept']:,} rows written of {manifest['rows_read']:,} {manifest['unit']}s read;"
        f" dropped: {dropped}\n"
        f"  anchors {stats['anchors']:,}, short of negatives {stats['anchors_short_of_negatives']:,};"
        f" candidates skipped: {skipped}\n"
        f"  positive score mean {stats['positive_scores'].get('mean', float('nan')):.3f},"
        f" negative score mean {stats['negative_scores'].get('mean', float('nan')):.3f}"
    )
    return 0


# --- config -----------------------------------------------------------------------
def _add_config(sub: Any) -> None:
    from pipeline.sampling.policies import WeightPolicy

    parser = sub.add_parser("config", help="write data_config.json: a sampling weight for each dataset of a corpus")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    parser.add_argument("--out", type=Path, default=Path("data_config.json"), help="where to write (default: %(default)s)")
    parser.add_argument("--check", type=Path, metavar="CONFIG", help="only validate CONFIG against CORPUS_DIR; write nothing")
    add_config_options(parser, WeightPolicy, title="weight policy")
    parser.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from pipeline.sampling.data_config import load_data_config, meta_path, write_data_config
    from pipeline.sampling.policies import WeightPolicy

    if args.check:
        entries = load_data_config(args.check, corpus_dir=args.corpus_dir)
        print(f"{args.check}: {len(entries)} entries, valid against {args.corpus_dir}")
        return 0
    policy = config_from_args(args, WeightPolicy)
    entries = write_data_config(args.corpus_dir, args.out, policy)
    total = sum(e["weight"] for e in entries)
    width = max(len(e["name"]) for e in entries)
    for entry in entries:
        print(f"{entry['name']:<{width}}  lines {entry['lines']:>10,}  weight {entry['weight']:>6}  share {entry['weight'] / total:6.1%}")
    print(f"wrote {args.out} ({len(entries)} datasets, policy {policy.kind}) and {meta_path(args.out)}")
    return 0


# --- train ------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    from pipeline.train.config import TrainConfig

    parser = sub.add_parser("train", help="train a sentence-embedding model on a corpus, batches drawn by data_config.json weights")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    parser.add_argument("--config", type=Path, required=True, help="the data_config.json to sample by")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument(
        "--nproc", default="1", metavar="N|auto",
        help="training processes: 1 (default), N (torchrun with N processes: one per GPU, or CPU processes with"
        " --device cpu) or auto (one per visible GPU)",
    )  # fmt: skip
    add_config_options(parser, TrainConfig, title="training options")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pipeline.train.config import TrainConfig
    from pipeline.train.launch import launch_training

    nproc: int | str = args.nproc
    if nproc != "auto":
        if not str(nproc).isdigit() or int(nproc) < 1:
            return _fail(f"--nproc takes a positive integer or 'auto', got {nproc!r}")
        nproc = int(nproc)
    config = config_from_args(args, TrainConfig)
    summary = launch_training(args.corpus_dir, args.config, args.out, config, nproc=nproc, log=print)
    if summary["skipped"]:
        print(f"{args.out} already holds this run (config hash {summary['config_hash'][:12]}): nothing to do")
        return 0
    resumed = f", resumed from {summary['resumed_from']}" if summary["resumed_from"] else ""
    loss = f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}" if summary["loss_first"] is not None else "no loss logged"
    print(
        f"trained {summary['steps']} steps, {summary['examples']:,} examples, {loss},"
        f" {summary['seconds']:.1f} s{resumed}; model in {summary['out_dir']}"
    )
    if check := summary.get("verify_shards"):
        print(
            f"first step after {summary.get('seconds_to_first_step') or 0:.1f} s; shards: {check['verified']} of"
            f" {check['shards']} checked by SHA-256 ({check['mode']}, {check['bytes'] / 2**20:,.1f} MiB,"
            f" {check['hash_seconds']:.2f} s hashing, training waited {check['wait_seconds']:.2f} s for it)"
        )
    return 0


# --- evaluate ---------------------------------------------------------------------
def _add_evaluate(sub: Any) -> None:
    from pipeline.evaluate.config import EvalConfig

    parser = sub.add_parser(
        "evaluate",
        help="score a model against its baseline (STSb, NLI triplets, held-out retrieval) and write a report",
        description="Score MODEL_DIR and a baseline on the STS benchmark, NLI triplets and the held-out pairs of a"
        " corpus; write report.json, report.md, metrics.png and heatmap.png to --out.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the trained model folder")
    parser.add_argument(
        "--baseline", metavar="MODEL_DIR",
        help="the model to compare with (default: base_model of MODEL_DIR/train_config.json, else the packaged model)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="the report folder")
    add_config_options(parser, EvalConfig, title="evaluation options")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate.config import EvalConfig
    from pipeline.evaluate.task import evaluate_model

    config = config_from_args(args, EvalConfig)
    report = evaluate_model(args.model_dir, args.baseline, config, args.out)
    width = max((len(row["name"]) for row in report["metrics"]), default=6)
    print(f"{'metric':<{width}}  {'model':>8}  {'baseline':>8}  {'delta':>8}")
    for row in report["metrics"]:
        values = [f"{v:>8.4f}" if v is not None else f"{'n/a':>8}" for v in (row["model"], row["baseline"])]
        delta = f"{row['delta']:>+8.4f}" if row["delta"] is not None else f"{'n/a':>8}"
        print(f"{row['name']:<{width}}  {values[0]}  {values[1]}  {delta}")
    print(f"verdict: {report['summary']['verdict']} (baseline: {report['baseline']['path']}); report in {args.out}")
    return 0


# --- run and verify (flows) -------------------------------------------------------
def _add_run(sub: Any) -> None:
    from flows.sources_file import DEFAULT_SOURCES_FILE

    parser = sub.add_parser("run", help="the main job: build the corpus, mine, write the config, train and evaluate (Prefect flow)")
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES_FILE, metavar="FILE",
                        help="JSON list of {source, inputs} (default: the bundled examples/sources.json)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="encoder for mining and start model for training (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--max-steps", type=int, default=20, help="training steps (default: %(default)s, a demo run)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for mining, training and evaluation (default: a GPU if visible)")
    parser.add_argument("--stsb", nargs="*", default=[], help="STSb files to evaluate on")
    parser.add_argument("--nli", nargs="*", default=[], help="NLI files or folders to evaluate on")
    parser.add_argument("--stop-after", choices=("config", "train", "evaluate"), default="evaluate",
                        help="last stage to run (default: %(default)s)")  # fmt: skip
    parser.add_argument("--train-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="train through this deployment (e.g. pairforge-train/gpu) instead of in-process")  # fmt: skip
    parser.add_argument("--evaluate-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="evaluate through this deployment (e.g. pairforge-evaluate/cpu) instead of in-process")  # fmt: skip
    parser.add_argument("--task-runner", default=None, metavar="SPEC",
                        help="where corpus tasks run: 'thread' (default), 'dask:local[:N]' (N worker processes) "
                             "or 'dask:tcp://HOST:8786' (an existing Dask scheduler); output is identical either way")  # fmt: skip
    parser.set_defaults(run=_run_run)


def _run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parent flow's parameters for the parsed ``run`` options."""
    from flows.sources_file import read_sources_file

    device = {"device": args.device} if args.device else {}
    model = {"model": args.model} if args.model else {}
    return {
        "sources": read_sources_file(args.sources),
        "out_dir": str(args.out),
        "mining": model,
        "training": {**model, **device, "max_steps": args.max_steps, "batch_size": args.batch_size},
        "evaluation": {**device, "stsb": list(args.stsb), "nli": list(args.nli)},
        "train_deployment": args.train_deployment,
        "evaluate_deployment": args.evaluate_deployment,
        "stop_after": args.stop_after,
        "task_runner": args.task_runner,
    }


def run_summary(summary: dict[str, Any]) -> str:
    """The end-of-run summary printed by ``pairforge run``."""
    lines = ["", "== pairforge run summary =="]
    datasets = summary["datasets"]
    width = max([len(n) for n in [*datasets, *summary["mined"]]] + [7])
    lines.append(f"{'dataset':<{width}}  {'read':>9}  {'kept':>9}  {'train':>9}  {'heldout':>7}")
    for name, rows in datasets.items():
        lines.append(f"{name:<{width}}  {rows['rows_read']:>9,}  {rows['rows_kept']:>9,}  {rows['rows_train']:>9,}  {rows['rows_heldout']:>7,}")
    for name, rows in summary["mined"].items():
        lines.append(f"negatives mined: {name}: {rows['rows_kept']:,} rows ({', '.join(rows['columns'][:3])})")
    entries = ", ".join(f"{e['name']}={e['weight']}" for e in summary["config_entries"])
    lines.append(f"config written: {summary['data_config']} ({entries})")
    if "train" in summary:
        train = summary["train"]
        state = "up to date, not retrained" if train.get("skipped") else f"loss {train.get('loss_first')} -> {train.get('loss_last')}"
        lines.append(f"training: {train['steps']} steps ({state})")
    if "evaluation" in summary:
        lines += ["", summary["evaluation"]["markdown"].rstrip()]
    lines += ["", "where everything is:", f"  corpus:      {summary['corpus_dir']}", f"  data config: {summary['data_config']}"]
    if "model_dir" in summary:
        lines.append(f"  model:       {summary['model_dir']}")
    if "report_dir" in summary:
        lines.append(f"  report:      {summary['report_dir']}/report.md")
    return "\n".join(lines)


def _prefect_defaults() -> None:
    from pipeline.devices import use_local_models_only

    use_local_models_only()
    # The library logs through the "pipeline" logger; route it into the run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    # No telemetry from the embedded server (its heartbeat fails noisily offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run_run(args: argparse.Namespace) -> int:
    from flows.runners import parse_runner_spec

    _prefect_defaults()
    parameters = _run_parameters(args)
    parse_runner_spec(args.task_runner)  # fail fast, before starting Prefect
    from flows.parent_flow import pairforge_pipeline

    summary = pairforge_pipeline(**parameters)
    print(run_summary(summary))
    return 0


def _add_verify(sub: Any) -> None:
    parser = sub.add_parser("verify", help="rebuild a corpus in a temporary folder and check it is byte-identical")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR", help="a corpus built by `pairforge run` (OUT/corpus)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary rebuild goes (default: system temp)")
    parser.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    """Rebuild and compare; 0 when identical, 1 when not."""
    _prefect_defaults()
    from flows.verify import read_build_spec, verify_corpus

    read_build_spec(args.corpus_dir)  # fail fast, before starting Prefect
    result = verify_corpus(str(args.corpus_dir), str(args.work_dir) if args.work_dir else None)
    if result["identical"]:
        print(f"{args.corpus_dir}: identical ({result['checked']} shards, manifests and data_config.json checked)")
        return 0
    print(f"{args.corpus_dir}: NOT identical ({result['checked']} files checked)")
    for key in ("differ", "missing", "extra"):
        for path in result[key]:
            print(f"  {key}: {path}")
    return 1


# --- the command ------------------------------------------------------------------
COMMANDS: list[Callable[[Any], None]] = [_add_ingest, _add_mine, _add_config, _add_train, _add_evaluate, _add_run, _add_verify]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = _Parser(
        prog="pairforge",
        description="Raw text dumps in; sentence-pair corpora, mined negatives, data_config.json and trained models out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
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
