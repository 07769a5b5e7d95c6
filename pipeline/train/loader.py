"""The streaming loader on the trainer's side: a :class:`~pipeline.train.stream.BatchStream` in; tokenized batches out.

In: a batch stream (global batches), this process's rank and the process count, the
trainer's data collator (tokenization) and, optionally, a folder for the batch log.
Out: :class:`StreamingTrainData`, a ``torch.utils.data.IterableDataset`` of ready
batches (the collator's tensors) for the DataLoader that
:func:`streaming_dataloader` builds, and its position after the last batch the trainer
took (:meth:`StreamingTrainData.state_dict`), which the trainer saves in each
checkpoint (:data:`LOADER_STATE_NAME`) and a resumed run loads back.

Each process keeps slice ``rank`` of each global batch (rows
``[rank * n, (rank + 1) * n)``, ``n = len(batch) / world_size``). A thread builds and
tokenizes the next batches while the trainer computes (HF tokenizers and pyarrow
release the GIL); the position saved is that of the last batch handed to the
trainer, not of the ones built ahead, so a checkpoint at step ``k`` resumes at batch
``k * gradient_accumulation_steps`` exactly.

The batch log (``batch_log``): each process appends one JSON line per batch it hands
to the trainer, ``{"batch", "dataset", "rows"}``, to ``rank-<rank>.jsonl``; a resumed
run appends the batches from its checkpoint on (a batch the killed run drew after its
last checkpoint appears again, drawn the same).
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from pipeline.train.stream import BatchStream

LOADER_STATE_NAME = "pairforge_loader_state.json"
# Batches built ahead of the trainer.
PREFETCH_BATCHES = 4


class StreamingTrainData(torch.utils.data.IterableDataset):
    """This process's share of a batch stream, tokenized, as an iterable dataset of whole batches.

    Args:
        stream: the global batch stream (the same in every process).
        collate: turns a list of row dicts into the model's inputs (the trainer's data collator).
        rank: this process's rank.
        world_size: the number of processes.
        batch_log: a folder for the batch log, or None.
        prefetch: batches built ahead on a thread (0: built when asked for).
    """

    def __init__(
        self,
        stream: BatchStream,
        collate: Callable[[list[dict[str, str]]], dict[str, Any]],
        rank: int = 0,
        world_size: int = 1,
        batch_log: str | Path | None = None,
        prefetch: int = PREFETCH_BATCHES,
    ) -> None:
        super().__init__()
        if stream.multiple_of % world_size:
            raise ValueError(f"the stream cuts batches to multiples of {stream.multiple_of}, not of {world_size} processes")
        self.stream = stream
        self.collate = collate
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.batch_log = None if batch_log is None else Path(batch_log) / f"rank-{rank}.jsonl"
        self._taken = stream.state_dict()
        self._stop: threading.Event | None = None
        self._producer: threading.Thread | None = None

    def state_dict(self) -> dict[str, Any]:
        """The stream's position after the last batch handed to the trainer."""
        return self._taken

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict` (a checkpoint's)."""
        self.stream.load_state_dict(state)
        self._taken = self.stream.state_dict()

    def _build(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        batch = self.stream.next_batch()
        share = len(batch) // self.world_size
        lo, hi = self.rank * share, (self.rank + 1) * share
        columns = list(batch.texts)
        features = [dict(zip(columns, row)) for row in zip(*(batch.texts[c][lo:hi] for c in columns))]
        record = {"batch": batch.index, "dataset": batch.name, "rows": batch.rows[lo:hi]}
        return self.collate(features), self.stream.state_dict(), record

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                _put(out, self._build(), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(out, exc, stop)

    def close(self) -> None:
        """Stop building batches ahead (the trainer may drop an iterator without closing it)."""
        if self._stop is not None:
            self._stop.set()
        if self._producer is not None:
            self._producer.join()
        self._stop = self._producer = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.close()
        # The stream may have run ahead of the trainer (batches built, not taken): go back.
        if self.stream.batches != self._taken["batches"]:
            self.stream.load_state_dict(self._taken)
        self.stream.prefetch()
        log = None
        if self.batch_log is not None:
            self.batch_log.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.batch_log, "a", encoding="utf-8")
        stop = self._stop = threading.Event()
        items: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        producer = None
        if self.prefetch:
            producer = threading.Thread(target=self._produce, args=(items, stop), name="pairforge-batches", daemon=True)
            self._producer = producer
            producer.start()
        try:
            while True:
                item = items.get() if producer else self._build()
                if isinstance(item, BaseException):
                    raise item
                features, self._taken, record = item
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                yield features
        finally:
            stop.set()
            if producer is not None:
                producer.join()
            if log is not None:
                log.close()


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put ``item`` once there is room, unless the consumer has stopped meanwhile."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _whole_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def streaming_dataloader(data: StreamingTrainData) -> torch.utils.data.DataLoader:
    """A DataLoader that hands over ``data``'s batches as they are (no workers, no re-batching).

    Its own generator keeps the DataLoader's seed draw off the global torch RNG, whose
    state a checkpoint saves for dropout: a resumed run draws the same dropout masks.
    """
    return torch.utils.data.DataLoader(data, batch_size=None, num_workers=0, collate_fn=_whole_batch, generator=torch.Generator())
