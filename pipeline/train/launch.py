"""Launch a training run: in this process, or under torchrun with one process per GPU.

In: the inputs of :func:`pipeline.train.task.train_model` (corpus, data_config.json,
model folder, :class:`pipeline.train.config.TrainConfig`) and a process count: an int,
or ``"auto"`` for one process per GPU this process sees. Out: the summary
``train_model`` returns, from this process when one process trains, else from the
rank-0 process of a ``torchrun`` launch, which writes it to a JSON file this process
reads back.

One process (``"auto"`` with 0 or 1 GPU visible, or ``1``) calls ``train_model``
here. More than one writes the run as a job file (:func:`write_training_job`: the
folders and every TrainConfig field, with its type) and starts

    python -m torch.distributed.run --standalone --nproc_per_node N -m pipeline.train.worker JOB.json

as a subprocess (:mod:`pipeline.train.worker`): the Hugging Face Trainer under
sentence-transformers then trains with DistributedDataParallel (NCCL on GPUs, gloo on
the CPU). The subprocess's output is streamed, line by line, to a callback (a Prefect
run logger's ``info`` in the training flow).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pipeline.corpus.files import atomic_write_json
from pipeline.devices import gpu_count
from pipeline.train.config import TrainConfig
from pipeline.train.task import train_model

ProcessCount = int | Literal["auto"]
LineCallback = Callable[[str], None]
# Output lines kept for the error message of a failed launch.
ERROR_TAIL_LINES = 40
ERROR_LINES_KEPT = 10
# A worker's own error: its one-line message, or the last line of a Python traceback.
# torchrun's summary of a failed launch (its own traceback, ~40 lines) comes after the
# workers' errors and ends in ChildFailedError, which says only that a worker failed.
_WORKER_ERROR_LINE = re.compile(r"^(\[\w+\]:\s*)?(pairforge: error: |([A-Za-z_][\w.]*)?(Error|Exception)\b: )")
_LAUNCHER_ERROR = "ChildFailedError"
# tqdm's progress bar redraws every 0.1 s; each redraw would be a log line in the flow.
# tqdm reads TQDM_<ARGUMENT> defaults from the environment (tqdm >= 4.66).
_CHILD_ENV_DEFAULTS = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30", "TOKENIZERS_PARALLELISM": "false"}

logger = logging.getLogger(__name__)


class TrainingLaunchError(RuntimeError):
    """A training launch failed: its exit code, the workers' errors and the last lines of output.

    Attributes:
        command: the argv that was run.
        returncode: its exit code.
        tail: its last output lines.
        errors: the workers' error lines (the CLI's ``pairforge: error:`` messages and
            the last line of each Python traceback), in the order they came.
    """

    def __init__(self, command: list[str], returncode: int, tail: list[str], errors: list[str] | None = None) -> None:
        self.command = command
        self.returncode = returncode
        self.tail = tail
        self.errors = errors or []
        message = f"training under torchrun failed with exit code {returncode}: {shlex.join(command)}"
        if self.errors:
            message += "\nerrors from the workers:\n" + "\n".join(f"  {line}" for line in self.errors)
        message += f"\nlast {len(tail)} lines of its output:\n" + ("\n".join(tail) if tail else "(no output)")
        super().__init__(message)


def resolve_process_count(nproc: ProcessCount, config: TrainConfig) -> int:
    """How many training processes to run.

    Args:
        nproc: ``"auto"`` (one per visible GPU, at least one; one when ``config.device``
            is ``cpu``) or a count. A count above 1 on a CPU machine runs that many CPU
            processes (gloo), which is how the launcher is tested.
        config: the run's config (its ``device`` decides whether GPUs count).

    Raises:
        ValueError: ``nproc`` is neither ``"auto"`` nor a positive int, or asks for more
            GPU processes than there are visible GPUs.
    """
    if nproc == "auto":
        return 1 if config.device == "cpu" else max(1, gpu_count())
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be 'auto' or a positive integer, got {nproc!r}")
    if nproc > 1 and config.device != "cpu":
        gpus = gpu_count()
        if 0 < gpus < nproc:
            raise ValueError(
                f"nproc={nproc} asks for one process per GPU but only {gpus} GPU(s) are visible;"
                " use nproc='auto', or device='cpu' for CPU processes"
            )
    return nproc


def write_training_job(
    path: str | os.PathLike[str],
    corpus_dir: str | os.PathLike[str],
    data_config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    summary_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the job file :mod:`pipeline.train.worker` runs: the folders, the whole config
    (every field with its type) and where rank 0 writes the run's summary.

    Paths are written as given: the workers run in this process's working directory.
    """
    job = {
        "corpus_dir": str(corpus_dir),
        "data_config": str(data_config_path),
        "out_dir": str(out_dir),
        "config": asdict(config),
        "summary": None if summary_path is None else str(summary_path),
    }
    atomic_write_json(Path(path), job)
    return Path(path)


def torchrun_command(job_path: str | os.PathLike[str], nproc: int) -> list[str]:
    """The argv that runs a training job file with ``nproc`` processes on this machine.

    ``--standalone`` makes torchrun start its own rendezvous on a free local port, so
    runs side by side do not clash.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "pipeline.train.worker", str(job_path),
    ]  # fmt: skip


def run_streaming(command: list[str], log: LineCallback, env: dict[str, str] | None = None) -> None:
    """Run ``command``, passing each line of its stdout and stderr to ``log`` as it comes.

    Carriage returns (progress bars) end lines too. If this process is interrupted
    (a cancelled flow run, Ctrl-C), the subprocess is terminated, then killed.

    Raises:
        TrainingLaunchError: the command exited with a non-zero code.
    """
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    errors: list[str] = []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, encoding="utf-8", errors="replace", bufsize=1, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # text mode: "\r", "\n" and "\r\n" all end a line
            line = line.rstrip()
            if line:
                tail.append(line)
                log(line)
                is_error = _WORKER_ERROR_LINE.match(line) and _LAUNCHER_ERROR not in line
                if is_error and line not in errors and len(errors) < ERROR_LINES_KEPT:
                    errors.append(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:
            # torchrun forwards SIGTERM to its workers and waits for them
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if returncode != 0:
        raise TrainingLaunchError(command, returncode, list(tail), errors)


def train_with_torchrun(
    corpus_dir: str | os.PathLike[str],
    data_config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    nproc: int,
    log: LineCallback | None = None,
) -> dict[str, Any]:
    """Train with ``nproc`` processes under torchrun and return the rank-0 summary.

    Returns:
        The summary :func:`pipeline.train.task.train_model` returned in the rank-0 process.

    Raises:
        TrainingLaunchError: torchrun exited with a non-zero code (a worker failed), or
            exited cleanly without writing the summary.
    """
    log = log or logger.info
    env = os.environ | {k: v for k, v in _CHILD_ENV_DEFAULTS.items() if k not in os.environ}
    with tempfile.TemporaryDirectory(prefix="pairforge-train-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        job = write_training_job(Path(tmp) / "job.json", corpus_dir, data_config_path, out_dir, config, summary_path)
        command = torchrun_command(job, nproc)
        log(f"training with {nproc} processes: {shlex.join(command)}")
        run_streaming(command, log, env=env)
        if not summary_path.is_file():
            raise TrainingLaunchError(command, 0, [f"exited cleanly but wrote no summary to {summary_path}"])
        return json.loads(summary_path.read_text(encoding="utf-8"))


def launch_training(
    corpus_dir: str | os.PathLike[str],
    data_config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig = TrainConfig(),
    nproc: ProcessCount = "auto",
    log: LineCallback | None = None,
) -> dict[str, Any]:
    """Train in this process or under torchrun, as ``nproc`` decides; the summary either way.

    Args:
        corpus_dir: the corpus root.
        data_config_path: a data_config.json naming datasets of that corpus.
        out_dir: the model folder to write.
        config: the training configuration.
        nproc: ``"auto"`` (one process per visible GPU; in this process with 0 or 1)
            or a process count (1: in this process).
        log: receives progress messages and, under torchrun, every output line.

    Returns:
        The summary of :func:`pipeline.train.task.train_model`, plus ``processes``.

    Raises:
        ValueError: a bad ``nproc``, or those of :func:`pipeline.train.task.train_model`.
        TrainingLaunchError: a torchrun launch failed.
    """
    log = log or logger.info
    processes = resolve_process_count(nproc, config)
    if processes == 1:
        summary = train_model(corpus_dir, data_config_path, out_dir, config)
    else:
        summary = train_with_torchrun(corpus_dir, data_config_path, out_dir, config, processes, log)
    return summary | {"processes": processes}
