"""The ``pairforge`` command: every subcommand's arguments and printing, in one place.

In: command-line arguments. Out: the library's files, a summary on stdout, an exit
code: 0 success, 1 a stage finished with failures (each failed input named on
stderr), 2 a usage or input error, another writer holding the output folder included
(one line on stderr naming the thing and what was expected), 3 an internal error (a
bug: one line, and the traceback with ``--debug``), 130 interrupted.

Errors become lines here, in :func:`main`, and nowhere else: the library raises
precise exceptions (``FileNotFoundError``, ``ValueError``, ``OSError``,
:class:`~pipeline.corpus.locks.FolderLockedError`) whose messages name the thing.
``pairforge --debug ...`` (or ``PAIRFORGE_DEBUG=1``) prints the traceback as well.

Every command that writes an output folder holds it for the whole write
(:func:`pipeline.corpus.locks.writer_lock`): ``ingest`` its ``--out`` corpus,
``mine`` its ``--out`` dataset, ``config`` the corpus when it writes into it,
``train`` the model folder, ``evaluate`` the report folder, ``run`` the run's corpus
(training and evaluation lock the model and report folders themselves) and
``verify`` the corpus it compares. A second writer exits 2 at once, naming the
holder, or waits for it with ``--wait``.

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
import traceback
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


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true",
        help="if another process is writing the output folder, wait for it instead of exiting with code 2",
    )  # fmt: skip


def _locked(folder: Path, args: argparse.Namespace, run: Callable[[], int]) -> int:
    """``run()`` while holding ``folder`` as its only writer (``--wait``: wait for the holder)."""
    from pipeline.corpus.locks import writer_lock

    def waiting(line: str) -> None:
        print(f"pairforge: {line}", file=sys.stderr, flush=True)

    with writer_lock(folder, wait=args.wait, on_wait=waiting):
        return run()


# --- ingest -----------------------------------------------------------------------
def _add_ingest(sub: Any) -> None:
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.sources import SOURCES

    parser = sub.add_parser("ingest", help="read raw source files into clean, deduplicated Parquet shards")
    parser.add_argument("source", choices=sorted(SOURCES), help="the source format of the inputs")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files (or SentEval folders)")
    parser.add_argument("--out", required=True, type=Path, help="corpus folder: one subfolder per dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_wait(parser)
    add_config_options(parser, IngestConfig, title="ingest options")
    parser.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest.config import IngestConfig, source_options
    from pipeline.ingest.plan import check_inputs

    config = config_from_args(args, IngestConfig)
    source_options(args.source, config.source_options)  # a wrong -o fails before any reading
    check_inputs(args.source, args.inputs)  # ... and a missing or misplaced input before any waiting
    return _locked(args.out, args, lambda: _ingest(args, config))


def _ingest(args: argparse.Namespace, config: Any) -> int:
    from pipeline.ingest.plan import ingest_source

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
    from pipeline.mining.config import MiningConfig

    parser = sub.add_parser("mine", help="mine hard negatives for a pair dataset with FAISS (triplet shards out)")
    _add_step_folders(parser, uses_model=True)
    parser.add_argument("--force", action="store_true", help="mine even if the output manifest already matches")
    add_config_options(parser, MiningConfig, title="mining options (sentence-transformers' names)")
    parser.set_defaults(run=_run_mine)


def _add_step_folders(parser: argparse.ArgumentParser, uses_model: bool) -> None:
    """The arguments of a dataset-folder-to-dataset-folder step: the folders and, for a model step, where it runs."""
    from pipeline.embed.cache import default_cache_dir
    from pipeline.embed.encoders import ENCODER_CHOICES

    parser.add_argument("dataset_dir", type=Path, help="a dataset folder with part-*.parquet shards and manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    _add_wait(parser)
    if not uses_model:
        return
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"embedding cache (default: {default_cache_dir()})")
    parser.add_argument("--device", default=None, help="encoder device (default: cuda if a GPU is visible, else cpu)")
    parser.add_argument(
        "--encoder", choices=ENCODER_CHOICES, default="auto",
        help="encoder backend: auto runs plain BERT models in numpy on a CPU (less memory), others in torch;"
        " numpy-mkl / numpy-openblas choose the numpy encoder's matrix products (default: %(default)s)",
    )  # fmt: skip


def _run_mine(args: argparse.Namespace) -> int:
    from pipeline.mining.config import MiningConfig

    config = config_from_args(args, MiningConfig)
    return _locked(args.out, args, lambda: _mine(args, config))


def _mine(args: argparse.Namespace, config: Any) -> int:
    from pipeline.mining.job import mine_negatives

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
        f"  {score_line(stats, args.out)}"
    )
    return 0


def score_line(stats: dict[str, Any], folder: Any = None) -> str:
    """Medians (and quartiles) of a mining or rescoring section's positive scores, negative scores and margins,
    and where their plot is (in ``folder``)."""
    parts = []
    for key, label in (("positive_scores", "positive"), ("negative_scores", "negative"), ("margins", "margin")):
        histogram = stats.get(key) or {}
        if "median" in histogram:
            parts.append(f"{label} median {histogram['median']:.3f} (p25 {histogram['p25']:.3f}, p75 {histogram['p75']:.3f})")
    plot = f"; histograms in {Path(folder or '.') / stats['plot']}" if stats.get("plot") else ""
    return ", ".join(parts or ["no scores"]) + plot


# --- curation steps ---------------------------------------------------------------
def _add_curate(sub: Any) -> None:
    from pipeline.curate import STEPS

    for step in STEPS.values():
        parser = sub.add_parser(step.command, help=step.help, description=step.help[0].upper() + step.help[1:] + ".")
        _add_step_folders(parser, uses_model=step.uses_model)
        parser.add_argument("--force", action="store_true", help="run even if the output manifest already matches")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        add_config_options(parser, step.config, title=f"{step.command} options")
        parser.set_defaults(run=_run_curate, step=step.name)


def _run_curate(args: argparse.Namespace) -> int:
    from pipeline.curate import STEPS

    step = STEPS[args.step]
    config = config_from_args(args, step.config)
    return _locked(args.out, args, lambda: _curate(args, step, config))


def _curate(args: argparse.Namespace, step: Any, config: Any) -> int:
    where = {"cache_dir": args.cache_dir, "device": args.device, "encoder": args.encoder} if step.uses_model else {}
    manifest = step.run(args.dataset_dir, args.out, config, force=args.force, progress=not args.quiet, **where)
    if not manifest.get("skipped"):
        print(curation_summary(step.command, args.dataset_dir, args.out, manifest))
    return 0


def curation_summary(command: str, dataset_dir: Any, out: Any, manifest: dict[str, Any]) -> str:
    """What a curation step kept and dropped, and its own figures, in a few lines."""
    dropped = ", ".join(f"{k}={v:,}" for k, v in manifest["dropped"].items()) or "nothing"
    lines = [
        f"{command} {dataset_dir} -> {out}: {manifest['rows_kept']:,} of {manifest['rows_read']:,} rows kept;"
        f" dropped {dropped} (quarantine: {manifest['quarantine']['rows']:,} rows in {manifest['quarantine']['path']})"
    ]
    if "consistency" in manifest:
        ranks = manifest["consistency"]["rank_histogram"]
        lines.append("  positive's rank for its anchor: " + ", ".join(f"{r}: {n:,}" for r, n in ranks.items() if n))
    if "semantic_dedup" in manifest:
        stats = manifest["semantic_dedup"]
        lines.append(
            f"  {stats['distinct_anchors']:,} distinct anchors in {stats['n_clusters']:,} clusters;"
            f" {stats['anchors_within_eps']:,} within eps={stats['eps']} of a kept one,"
            f" {stats['rows_repeating_an_anchor']:,} rows repeat an anchor"
        )
    if "rescoring" in manifest:
        stats = manifest["rescoring"]
        rules = ", ".join(f"{k}={v:,}" for k, v in stats["negatives_dropped"].items() if v) or "none"
        lines.append(f"  {stats['negatives']:,} negatives judged by the {stats['model_type']}; failed: {rules}")
        lines.append(f"  {score_line(stats, out)}")
    if "decontamination" in manifest:
        stats = manifest["decontamination"]
        for entry in stats["eval_sets"]:
            lines.append(f"  {entry['kind']} {entry['path']}: {entry['texts']:,} texts, {entry['rows_matched']:,} rows matched")
        lines.append(f"  matched exactly: {stats['rows_matched']['exact']:,}, by n-gram: {stats['rows_matched']['ngram']:,}")
    return "\n".join(lines)


# --- config -----------------------------------------------------------------------
def _add_config(sub: Any) -> None:
    from pipeline.sampling.policies import WeightPolicy

    parser = sub.add_parser("config", help="write data_config.json: a sampling weight for each dataset of a corpus")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    parser.add_argument("--out", type=Path, default=Path("data_config.json"), help="where to write (default: %(default)s)")
    parser.add_argument("--check", type=Path, metavar="CONFIG", help="only validate CONFIG against CORPUS_DIR; write nothing")
    _add_wait(parser)
    add_config_options(parser, WeightPolicy, title="weight policy")
    parser.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from pipeline.sampling.data_config import load_data_config
    from pipeline.sampling.policies import WeightPolicy

    if args.check:
        entries = load_data_config(args.check, corpus_dir=args.corpus_dir)
        print(f"{args.check}: {len(entries)} entries, valid against {args.corpus_dir}")
        return 0
    policy = config_from_args(args, WeightPolicy)
    if not args.corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {args.corpus_dir}")
    corpus = args.corpus_dir.resolve()
    if corpus in args.out.resolve().parents:
        # Written into the corpus: a corpus file, so the corpus's writer lock. Elsewhere
        # it is one file renamed into place, which needs none.
        return _locked(corpus, args, lambda: _config(args, policy))
    return _config(args, policy)


def _config(args: argparse.Namespace, policy: Any) -> int:
    from pipeline.sampling.data_config import meta_path, write_data_config

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
    _add_wait(parser)
    add_config_options(parser, TrainConfig, title="training options")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pipeline.train.config import TrainConfig

    nproc: int | str = args.nproc
    if nproc != "auto":
        if not str(nproc).isdigit() or int(nproc) < 1:
            return _fail(f"--nproc takes a positive integer or 'auto', got {nproc!r}")
        nproc = int(nproc)
    config = config_from_args(args, TrainConfig)
    return _locked(args.out, args, lambda: _train(args, config, nproc))


def _train(args: argparse.Namespace, config: Any, nproc: int | str) -> int:
    from pipeline.train.launch import launch_training

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
    parser.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="the report folder")
    _add_wait(parser)
    add_config_options(parser, EvalConfig, title="evaluation options")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate.config import EvalConfig

    config = config_from_args(args, EvalConfig)
    return _locked(args.out, args, lambda: _evaluate(args, config))


def _evaluate(args: argparse.Namespace, config: Any) -> int:
    from pipeline.evaluate.report import key_figures
    from pipeline.evaluate.task import evaluate_model

    report = evaluate_model(args.model_dir, args.baseline, config, args.out)
    width = max((len(row["name"]) for row in report["metrics"]), default=6)
    print(f"{'metric':<{width}}  {'rows':>7}  {'model':>8}  {'baseline':>8}  {'delta':>8}  95% interval of delta")
    for row in report["metrics"]:
        values = [f"{v:>8.4f}" if v is not None else f"{'n/a':>8}" for v in (row["model"], row["baseline"])]
        delta = f"{row['delta']:>+8.4f}" if row["delta"] is not None else f"{'n/a':>8}"
        interval = f"  {row['interval'][0]:+.4f} to {row['interval'][1]:+.4f}" if row.get("interval") else ""
        print(f"{row['name']:<{width}}  {row['rows'] or 0:>7,}  {values[0]}  {values[1]}  {delta}{interval}")
    if report["left_out"]:
        count = len(report["left_out"])
        print(f"left out: {count} figure{'s' if count != 1 else ''} resting on fewer than {config.min_rows:,} rows (listed in {args.out}/report.md)")
    print(f"figures that matter: {key_figures(report)}")
    print(f"verdict: {report['summary']['verdict']} (baseline: {report['baseline']['path']}); report in {args.out}")
    return 0


# --- ablate (flow) ----------------------------------------------------------------
def _add_ablate(sub: Any) -> None:
    from flows.sources_file import DEFAULT_SOURCES_FILE
    from pipeline.ablate import AblationConfig

    parser = sub.add_parser(
        "ablate",
        help="train every variant of the recipe (naive ... filtered) per seed and report what each step buys (Prefect flow)",
        description="Build the corpora from --sources, train the same start model for the same steps on each variant"
        " (naive, clean, mined-naive, mined-percpos, weighted, filtered) once per seed, score each on the same"
        " benchmarks, and write report.md, report.json and ablation.png to --out (docs/ablation.md).",
    )
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES_FILE, metavar="FILE",
                        help="JSON list of {source, inputs} (default: the bundled examples/sources.json)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("ablation"), help="the ablation folder (default: %(default)s)")
    _add_wait(parser)
    add_config_options(parser, AblationConfig, title="ablation options")
    parser.set_defaults(run=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    import dataclasses

    from flows.sources_file import absolute_path
    from pipeline.ablate import AblationConfig

    config = config_from_args(args, AblationConfig)
    sources = _checked_inputs(args.sources, config.model, config.stsb, config.nli)
    options = dataclasses.asdict(config)
    for name in ("stsb", "nli"):
        options[name] = [absolute_path(p) for p in options[name]]
    if config.model:
        options["model"] = absolute_path(config.model)
    _prefect_defaults()
    return _locked(args.out, args, lambda: _ablate(sources, args, options))


def _ablate(sources: list[dict[str, Any]], args: argparse.Namespace, options: dict[str, Any]) -> int:
    from flows.ablate import pairforge_ablate
    from pipeline.ablate.report import report_markdown

    report = pairforge_ablate(sources=sources, out_dir=str(args.out), options=options, wait_for_lock=args.wait)
    print("", "== pairforge ablate summary ==", report_markdown(report).rstrip(), "", f"report: {args.out}/report.md,"
          f" {args.out}/report.json, {args.out}/ablation.png", sep="\n")  # fmt: skip
    return 0


# --- run and verify (flows) -------------------------------------------------------
# The bundled examples hold about 300 pairs: a quarter held out gives the evaluation's
# pooled figures some 70 rows to rest on (at the ingest default of 5%, 14).
RUN_HELDOUT_FRACTION = 0.25


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
    parser.add_argument(
        "--heldout-fraction", type=float, default=RUN_HELDOUT_FRACTION, metavar="F",
        help="share of each dataset's rows held out for the evaluation, never trained on (default: %(default)s: on the"
        " bundled examples, enough held-out rows for the evaluation's figures to rest on)",
    )  # fmt: skip
    parser.add_argument("--stsb", nargs="*", default=[], help="STSb files to evaluate on")
    parser.add_argument("--nli", nargs="*", default=[], help="NLI files or folders to evaluate on")
    parser.add_argument("--stop-after", choices=("config", "train", "evaluate"), default="evaluate",
                        help="last stage to run (default: %(default)s)")  # fmt: skip
    parser.add_argument("--train-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="train through this deployment (e.g. pairforge-train/gpu) instead of in-process")  # fmt: skip
    parser.add_argument("--evaluate-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="evaluate through this deployment (e.g. pairforge-evaluate/cpu) instead of in-process")  # fmt: skip
    parser.add_argument("--curation", default=None, metavar="JSON|@FILE",
                        help='curation steps to run, as JSON or @file: {"decontaminate": {}, "consistency": {"k": 2},'
                             ' "semantic_dedup": {}, "rescore": {"model": "DIR"}} (docs/curation.md; default: none)')  # fmt: skip
    parser.add_argument("--task-runner", default=None, metavar="SPEC",
                        help="where corpus tasks run: 'thread' (default), 'dask:local[:N]' (N worker processes) "
                             "or 'dask:tcp://HOST:8786' (an existing Dask scheduler); output is identical either way")  # fmt: skip
    _add_wait(parser)
    parser.set_defaults(run=_run_run)


def _checked_inputs(sources_file: Path, model: str | None, stsb: Sequence[str], nli: Sequence[str]) -> list[dict[str, Any]]:
    """The sources of ``sources_file``, every input, the model and the benchmark files checked to exist and fit.

    Raises:
        FileNotFoundError: a sources file, input, model or benchmark file that does not exist.
        ValueError: an unknown source or an input the source does not read.
    """
    from flows.sources_file import read_sources_file
    from pipeline.embed.models import resolve_model_path
    from pipeline.ingest.plan import check_inputs

    sources = read_sources_file(sources_file)
    for entry in sources:
        check_inputs(entry["source"], entry["inputs"])
    if model:
        resolve_model_path(model)
    for kind, paths in (("STSb file", stsb), ("NLI benchmark input", nli)):
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"{kind} not found: {', '.join(missing)}")
    return sources


def _run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parent flow's parameters for the parsed ``run`` options, every input checked.

    Everything a run would only find wrong inside the flow (an unknown source, a
    missing or misplaced input, a model or benchmark file that does not exist) is
    checked here, so that it is one line on stderr and not a failed flow run.
    """
    from flows.sources_file import absolute_path
    from pipeline.ingest.config import IngestConfig

    sources = _checked_inputs(args.sources, args.model, args.stsb, args.nli)
    IngestConfig(heldout_fraction=args.heldout_fraction)  # a fraction out of range: one line, before Prefect
    device = {"device": args.device} if args.device else {}
    model = {"model": absolute_path(args.model)} if args.model else {}
    return {
        "sources": sources,
        "out_dir": str(args.out),
        "ingest": {"heldout_fraction": args.heldout_fraction},
        "mining": model,
        "training": {**model, **device, "max_steps": args.max_steps, "batch_size": args.batch_size},
        "evaluation": {**device, "stsb": [absolute_path(p) for p in args.stsb], "nli": [absolute_path(p) for p in args.nli]},
        "curation": _curation_option(args.curation),
        "train_deployment": args.train_deployment,
        "evaluate_deployment": args.evaluate_deployment,
        "stop_after": args.stop_after,
        "task_runner": args.task_runner,
        "wait_for_lock": args.wait,
    }


def _curation_option(value: str | None) -> dict[str, Any] | None:
    """``--curation``: a JSON object, or ``@FILE`` holding one.

    Raises:
        ValueError: not a JSON object (the message says where).
    """
    import json

    if value is None:
        return None
    where = "--curation"
    if value.startswith("@"):
        where = value[1:]
        try:
            value = Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--curation {where}: cannot read it ({exc.strerror})") from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f'{where}: expected a JSON object such as {{"consistency": {{"k": 2}}}}, got {type(parsed).__name__}')
    return parsed


def run_summary(summary: dict[str, Any]) -> str:
    """The end-of-run summary printed by ``pairforge run``."""
    lines = ["", "== pairforge run summary =="]
    datasets = summary["datasets"]
    width = max([len(n) for n in [*datasets, *summary["mined"]]] + [7])
    lines.append(f"{'dataset':<{width}}  {'read':>9}  {'kept':>9}  {'train':>9}  {'heldout':>7}")
    for name, rows in datasets.items():
        lines.append(f"{name:<{width}}  {rows['rows_read']:>9,}  {rows['rows_kept']:>9,}  {rows['rows_train']:>9,}  {rows['rows_heldout']:>7,}")
    for name, rows in summary.get("curated", {}).items():
        dropped = ", ".join(f"{k}={v:,}" for k, v in rows["dropped"].items()) or "nothing"
        lines.append(f"curated ({rows['stage']}): {name}: {rows['rows_kept']:,} of {rows['rows_read']:,} rows kept, dropped {dropped}")
    for name, rows in summary["mined"].items():
        lines.append(f"negatives mined: {name}: {rows['rows_kept']:,} rows ({', '.join(rows['columns'][:3])})")
        scores = rows.get("scores") or {}
        if scores.get("margins"):
            lines.append(f"  {score_line(scores, summary['corpus_dir'])}")
    entries = ", ".join(f"{e['name']}={e['weight']}" for e in summary["config_entries"])
    lines.append(f"config written: {summary['data_config']} ({entries})")
    if "train" in summary:
        train = summary["train"]
        state = "up to date, not retrained" if train.get("skipped") else f"loss {train.get('loss_first')} -> {train.get('loss_last')}"
        lines.append(f"training: {train['steps']} steps ({state})")
    if "evaluation" in summary:
        evaluation = summary["evaluation"]
        lines.append(f"evaluation ({evaluation['verdict']}): {evaluation['key_figures']}")
        lines += ["", evaluation["markdown"].rstrip()]
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
    from flows.paths import corpus_paths
    from flows.runners import parse_runner_spec

    _prefect_defaults()
    parameters = _run_parameters(args)
    parse_runner_spec(args.task_runner)  # fail fast, before starting Prefect
    from flows.curate import resolve_curation

    resolve_curation(parameters["curation"], parameters["evaluation"])  # a bad step or option: one line, before Prefect
    # The flow locks its corpus too; taken here first, a busy corpus is one line on
    # stderr before Prefect starts (the flow's own lock is then this process's).
    return _locked(corpus_paths(args.out)["corpus"], args, lambda: _run_flow(parameters))


def _run_flow(parameters: dict[str, Any]) -> int:
    from flows.parent_flow import pairforge_pipeline

    summary = pairforge_pipeline(**parameters)
    print(run_summary(summary))
    return 0


def _add_verify(sub: Any) -> None:
    parser = sub.add_parser("verify", help="rebuild a corpus in a temporary folder and check it is byte-identical")
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR", help="a corpus built by `pairforge run` (OUT/corpus)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary rebuild goes (default: system temp)")
    _add_wait(parser)
    parser.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    """Rebuild and compare; 0 when identical, 1 when not."""
    from flows.verify import read_build_spec

    read_build_spec(args.corpus_dir)  # fail fast (no build.json, an input moved), before starting Prefect
    # No writer may change the corpus while it is compared.
    return _locked(args.corpus_dir, args, lambda: _verify(args))


def _verify(args: argparse.Namespace) -> int:
    _prefect_defaults()
    from flows.verify import verify_corpus

    result = verify_corpus(str(args.corpus_dir), str(args.work_dir) if args.work_dir else None, wait_for_lock=args.wait)
    if result["identical"]:
        print(f"{args.corpus_dir}: identical ({result['checked']} shards, manifests and data_config.json checked)")
        return 0
    print(f"{args.corpus_dir}: NOT identical ({result['checked']} files checked)")
    for key in ("differ", "missing", "extra"):
        for path in result[key]:
            print(f"  {key}: {path}")
    return 1


# --- the command ------------------------------------------------------------------
COMMANDS: list[Callable[[Any], None]] = [
    _add_ingest, _add_mine, _add_curate, _add_config, _add_train, _add_evaluate, _add_ablate, _add_run, _add_verify,
]  # fmt: skip


DEBUG_ENV = "PAIRFORGE_DEBUG"
_DEBUG_HELP = f"on an error, print the traceback too (or set {DEBUG_ENV}=1)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = _Parser(
        prog="pairforge",
        description="Raw text dumps in; sentence-pair corpora, mined negatives, data_config.json and trained models out.",
        epilog="exit codes: 0 done; 1 done, but an input failed (named on stderr and in the manifest);"
        " 2 a usage or input error, or another process writing the output folder (one line on stderr);"
        " 3 an internal error (rerun with --debug for the traceback).",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        # `pairforge ingest --debug ...` as well as `pairforge --debug ingest ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


# Errors of the input, the arguments or the environment that a user can act on: each
# message names the thing (the library's contract) and becomes one line, exit 2.
def _user_error_types() -> tuple[type[BaseException], ...]:
    from pipeline.corpus.locks import FolderLockedError
    from pipeline.io.errors import InputFileError

    return (FolderLockedError, InputFileError, ValueError, OSError)


def error_line(exc: BaseException) -> str:
    """One line for an exception: its message (an ``OSError`` from the system: ``PATH: reason``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        names = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        text = f"{names}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pairforge`` console script.

    Returns the exit code (see the module docstring). A user error is one line on
    stderr, ``pairforge: error: ...``; with ``--debug`` or ``PAIRFORGE_DEBUG=1`` its
    traceback comes first.
    """
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("pairforge: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, _user_error_types()):
            return _fail(error_line(exc))
        hint = "" if debug else "; rerun with --debug for the traceback"
        print(f"pairforge: internal error: {type(exc).__name__}: {error_line(exc)} (a bug{hint})", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
