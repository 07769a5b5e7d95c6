"""``pairforge run`` and ``pairforge verify``: command-line options in, flow runs and a summary out.

``run`` runs the parent flow (flows/parent_flow.py) on the sources of a sources file (by
default the bundled ``examples/sources.json``) with Prefect's local ephemeral API when
no server is configured, and prints what it made: datasets and rows, negatives mined,
the data_config.json written, training steps, the evaluation table, and where it all
is. ``verify`` rebuilds a corpus in a temporary folder and says whether every shard,
manifest and data_config.json came out identical (exit code 0) or not (1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES_FILE = PROJECT_ROOT / "examples" / "sources.json"


def read_sources_file(path: Path) -> list[dict[str, Any]]:
    """The ``[{"source", "inputs"}]`` list of a sources file, inputs resolved.

    A relative input path is kept as written when it exists from the current folder
    (so manifests name it as the user did); otherwise it is taken relative to the
    folder above the sources file (the project root for ``examples/sources.json``).

    Raises:
        FileNotFoundError: the file or one of its inputs does not exist.
        ValueError: the file is not a list of ``{"source", "inputs"}`` objects.
    """
    if not path.is_file():
        raise FileNotFoundError(f"sources file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"source", "inputs"} <= e.keys() for e in entries):
        raise ValueError(f'{path}: expected a list of {{"source": NAME, "inputs": [PATH, ...]}} objects')
    base = path.resolve().parent.parent
    resolved = []
    for entry in entries:
        inputs = []
        for raw in entry["inputs"]:
            candidate = Path(raw)
            if not candidate.is_absolute() and not candidate.exists():
                candidate = base / raw
            if not candidate.exists():
                raise FileNotFoundError(f"{path}: input of source {entry['source']!r} not found: {raw}")
            inputs.append(str(candidate))
        resolved.append({"source": entry["source"], "inputs": inputs})
    return resolved


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pairforge run``."""
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES_FILE, metavar="FILE",
                        help="JSON list of {source, inputs} (default: the bundled examples/sources.json)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="encoder for mining and start model for training (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--max-steps", type=int, default=20, help="training steps (default: %(default)s, a demo run)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for mining, training and evaluation (default: a GPU if visible)")
    parser.add_argument("--stsb", nargs="*", default=[], help="STSb files to evaluate on")
    parser.add_argument("--nli", nargs="*", default=[], help="NLI files or folders to evaluate on")
    parser.add_argument("--stop-after", choices=("config", "train", "evaluate"), default="evaluate",
                        help="last stage to run (default: %(default)s)")
    parser.add_argument("--train-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="train through this deployment (e.g. pairforge-train/gpu) instead of in-process")
    parser.add_argument("--evaluate-deployment", default=None, metavar="FLOW/DEPLOYMENT",
                        help="evaluate through this deployment (e.g. pairforge-evaluate/cpu) instead of in-process")
    parser.add_argument("--task-runner", default=None, metavar="SPEC",
                        help="where corpus tasks run: 'thread' (default), 'dask:local[:N]' (N worker processes) "
                             "or 'dask:tcp://HOST:8786' (an existing Dask scheduler); output is identical either way")


def run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parent flow's parameters for the parsed ``run`` options."""
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


def format_summary(summary: dict[str, Any]) -> str:
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
    # The library logs through the "pipeline" logger; route it into the run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No telemetry from the embedded server (its heartbeat fails noisily offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_command(args: argparse.Namespace) -> int:
    """Run the parent flow and print its summary; 0 on success."""
    _prefect_defaults()
    parameters = run_parameters(args)
    from flows.runners import parse_runner_spec

    parse_runner_spec(args.task_runner)  # fail fast, before starting Prefect
    from flows.parent_flow import pairforge_pipeline

    summary = pairforge_pipeline(**parameters)
    print(format_summary(summary))
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pairforge verify``."""
    parser.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR", help="a corpus built by `pairforge run` (OUT/corpus)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary rebuild goes (default: system temp)")


def verify_command(args: argparse.Namespace) -> int:
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
