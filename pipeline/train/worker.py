"""One training process of a torchrun launch: a job file in, the trained model folder out.

In: the path of a job file written by :func:`pipeline.train.launch.write_training_job`
(``python -m pipeline.train.worker JOB.json``, one process per GPU under torchrun).
Out: what :func:`pipeline.train.task.train_model` writes; the rank-0 process also
writes the run's summary where the job says. A user error (a config that does not
validate, a missing shard) is one line on stderr, ``pairforge: error: ...``, and exit
code 2, which the launcher picks out of the workers' output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.corpus.files import atomic_write_json
from pipeline.train.config import TrainConfig
from pipeline.train.task import is_main_process, train_model


def run_job(job_path: str | Path) -> int:
    """Run the job file's training in this process; the exit code."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    try:
        summary = train_model(job["corpus_dir"], job["data_config"], job["out_dir"], TrainConfig(**job["config"]))
    except (FileNotFoundError, ValueError) as exc:
        print(f"pairforge: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if is_main_process():
        if job.get("summary"):
            atomic_write_json(Path(job["summary"]), summary)
        print(f"trained {summary['steps']} steps in {summary.get('seconds', 0.0):.1f} s; model in {job['out_dir']}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m pipeline.train.worker JOB.json (written by pipeline.train.launch)", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_job(sys.argv[1]))
