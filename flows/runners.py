"""Task-runner selection: a runner spec string in; a Prefect task runner (or None) out.

The corpus flows run their tasks (one per input file, per source, per dataset) on
whatever task runner their caller picks, so the same code runs on one machine or on a
Dask cluster. A spec is a plain string, so it can be a flow parameter, a CLI option
(``pairforge run --task-runner ...``) or a deployment parameter:

* ``None``, ``""`` or ``"thread"``: Prefect's default thread pool (one process);
* ``"dask:local"`` / ``"dask:local:N"``: a temporary ``distributed.LocalCluster`` of
  N worker processes (default: one per CPU core), one thread each;
* ``"dask:tcp://HOST:8786"`` (any Dask address, ``tls://`` included): an existing
  scheduler, e.g. the Kubernetes set-up of deploy/README.md.

Dask workers are other processes: they import ``flows`` and ``pipeline`` (install the
project on them) and must reach the same Prefect API as the flow. With Prefect's
ephemeral API there is no address to share, so :func:`shared_prefect_api` starts one
temporary server for the whole run (without it every worker would start its own and
record task runs that the flow never sees).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal

DASK_PREFIX = "dask:"
LOCAL = "local"


@dataclass(frozen=True)
class RunnerSpec:
    """A parsed task-runner spec.

    Attributes:
        kind: ``thread`` (Prefect's default) or ``dask``.
        n_workers: worker processes of a local Dask cluster (None: one per core).
        address: the scheduler address of an existing Dask cluster (None: a local one).
    """

    kind: Literal["thread", "dask"]
    n_workers: int | None = None
    address: str | None = None


def parse_runner_spec(spec: str | None) -> RunnerSpec:
    """Parse ``None | "thread" | "dask:local[:N]" | "dask:<scheduler address>"``.

    Raises:
        ValueError: the spec is none of those (the message lists what is accepted).
    """
    if spec is None or spec.strip() in ("", "thread"):
        return RunnerSpec("thread")
    text = spec.strip()
    if not text.startswith(DASK_PREFIX):
        raise ValueError(f"unknown task runner {spec!r}: expected 'thread', 'dask:local[:N]' or 'dask:tcp://HOST:PORT'")
    target = text[len(DASK_PREFIX):]
    if target == LOCAL:
        return RunnerSpec("dask")
    if target.startswith(LOCAL + ":"):
        count = target[len(LOCAL) + 1:]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"task runner {spec!r}: worker count must be a positive integer, got {count!r}")
        return RunnerSpec("dask", n_workers=int(count))
    if "://" not in target or target.endswith("://"):
        raise ValueError(f"task runner {spec!r}: expected a scheduler address such as dask:tcp://scheduler:8786")
    return RunnerSpec("dask", address=target)


def local_cluster_kwargs(n_workers: int | None, cores_per_worker: int | None = None) -> dict[str, Any]:
    """``LocalCluster`` arguments: worker processes of one task thread each, no dashboard.

    One task at a time per process because the tasks are CPU-bound Python; each
    worker's own thread pools (polars, numpy, torch) get ``cores_per_worker`` threads
    (default: the machine's cores shared out), so N workers do not each start a pool
    as large as the machine.
    """
    workers = n_workers or os.cpu_count() or 1
    cores = cores_per_worker or max(1, (os.cpu_count() or 1) // workers)
    threads = {name: str(cores) for name in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None, "env": threads}


def task_runner_from(spec: str | None) -> Any | None:
    """The Prefect task runner for ``spec``; None means the flow's default (threads).

    Raises:
        ValueError: the spec does not parse (see :func:`parse_runner_spec`).
        ImportError: a Dask spec where prefect-dask is not installed.
    """
    parsed = parse_runner_spec(spec)
    if parsed.kind == "thread":
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"task runner {spec!r} needs prefect-dask: pip install prefect-dask ({exc})") from None
    if parsed.address is not None:
        return DaskTaskRunner(address=parsed.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(parsed.n_workers))


def with_runner(flow: Any, spec: str | None) -> Any:
    """``flow`` itself, or a copy of it running its tasks on the runner of ``spec``."""
    runner = task_runner_from(spec)
    return flow if runner is None else flow.with_options(task_runner=runner)


@contextlib.contextmanager
def shared_prefect_api(spec: str | None) -> Iterator[str | None]:
    """Make sure Dask workers report to this process's Prefect API; yield its URL.

    With a thread runner, or when ``PREFECT_API_URL`` is already set (a server, the
    test harness), nothing changes. Otherwise this process talks to Prefect's
    temporary (ephemeral) server, a subprocess on a local port: it is started if it
    is not running yet and, for the duration, ``PREFECT_API_URL`` points at it, in the
    settings (which Prefect serializes into every Dask task) and in the environment
    (which local worker processes inherit). Workers on other machines cannot reach it:
    give them a real server (deploy/README.md, "Scaling out on Dask").
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    current = PREFECT_API_URL.value()
    if parse_runner_spec(spec).kind == "thread" or current:
        yield current
        return
    from prefect.server.api.server import SubprocessASGIServer

    # The same singleton Prefect's client starts in ephemeral mode; it stops at exit.
    server = SubprocessASGIServer()
    server.start(timeout=180)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def dask_cluster(spec: str | None) -> Iterator[str | None]:
    """One local Dask cluster shared by every stage of a run; yield the spec to use.

    For ``dask:local[:N]`` the cluster starts once here and the stages connect to it
    by address (``dask:tcp://...``) instead of each starting its own; any other spec
    is yielded unchanged.
    """
    parsed = parse_runner_spec(spec)
    if parsed.kind != "dask" or parsed.address is not None:
        yield spec
        return
    from distributed import LocalCluster

    with LocalCluster(**local_cluster_kwargs(parsed.n_workers)) as cluster:
        yield DASK_PREFIX + cluster.scheduler_address
