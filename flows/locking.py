"""The writer lock of a flow run: an output folder in; held for the run, named after the run.

In: the folder a flow writes and whether to wait for another writer. Out: the context
manager of :func:`pipeline.corpus.locks.writer_lock`, its holder record naming the
flow run (``pairforge-pipeline/quiet-fox (<id>), deployment weekly``), so that a
second writer, or the Prefect UI of the flow run it made fail, says which run holds
the folder.

Flows take their lock in the flow body, the entry point: the ``pairforge-pipeline``
flow holds its corpus for the whole run, and the stage flows (``build-corpus``,
``mine-negatives``, ``write-config``) take the same lock when called on their own and
find it already held by their process when called from the pipeline. Their tasks,
wherever they run (threads, Dask workers), never lock: the flow holds the folder for
all of them. ``pairforge-train`` and ``pairforge-evaluate`` lock the model and the
report folder, in-process or as deployment runs on other workers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

WAIT_DOC = "wait for another writer of the output folder instead of failing at once"


def _run_label() -> str | None:
    from prefect.runtime import deployment, flow_run

    if not flow_run.id:
        return None
    label = f"{flow_run.flow_name}/{flow_run.name} ({flow_run.id})"
    if deployment.id:
        label += f", deployment {deployment.name}"
    return label


@contextlib.contextmanager
def flow_lock(folder: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder`` as its only writer while the ``with`` block runs, in a flow run.

    Raises:
        pipeline.corpus.locks.FolderLockedError: another process writes it (without ``wait``);
            the flow run fails with that one line as its message.
    """
    from prefect import get_run_logger

    from pipeline.corpus.locks import writer_lock

    logger = get_run_logger()
    with writer_lock(folder, wait=wait, flow_run=_run_label(), on_wait=logger.warning) as root:
        yield root
