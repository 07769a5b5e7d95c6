"""What decides a training run: :class:`TrainConfig`, saved with its hash in the model folder.

In: option values. Out: a frozen, validated config. Fields that only change how a run
is driven (checkpoint and logging rates, workers, resuming) are left out of the run's
hash (:data:`OPERATIONAL_FIELDS`), so a resumed run may save or log at another rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LossName = Literal["mnrl", "cached_mnrl"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LoaderName = Literal["stream", "memory"]
VerifyShards = Literal["background", "upfront", "off"]
# Fields that change how a run is driven, not what it computes: left out of the run's
# hash, so a resumed run may save, log or check at a different rate.
OPERATIONAL_FIELDS = frozenset(
    {"save_steps", "save_total_limit", "logging_steps", "dataloader_num_workers", "resume", "verify_shards", "batch_log"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved, with its hash, in the model folder.

    Attributes:
        model: a local sentence-transformers or Hugging Face model folder; None for the
            packaged all-MiniLM-L6-v2.
        batch_size: rows per batch per device (the 1B recipe: 128 per TPU core).
        epochs: passes over the data, where one pass is as many batches as the data fills once.
        max_steps: optimizer steps; when set, overrides ``epochs``.
        steps_per_epoch: batches per epoch, to replace the default length of a pass.
        learning_rate: AdamW's peak learning rate.
        warmup_steps: linear warmup steps, at most 10% of the run's steps.
        weight_decay: AdamW weight decay.
        max_seq_length: tokens per text; longer texts are cut.
        loss: ``mnrl`` (MultipleNegativesRankingLoss) or ``cached_mnrl`` (its GradCache
            version, for batches larger than memory allows).
        scale: the loss's similarity scale (1B recipe: 20).
        mini_batch_size: ``cached_mnrl``'s mini-batch size.
        pooling: pooling mode when the start model is a plain Hugging Face folder.
        normalize: add a Normalize module when the start model is a plain Hugging Face folder.
        precision: ``auto`` (bf16 on a GPU that has it, else fp32), ``fp32``, ``bf16``, ``fp16``.
        device: ``cpu`` to force the CPU; None picks the GPU when there is one.
        seed: seeds the model's initialisation of new layers, dropout and the batch order.
        gradient_accumulation_steps: batches per optimizer step.
        save_steps: steps between checkpoints.
        save_total_limit: checkpoints kept.
        logging_steps: steps between logged losses (the first step is always logged).
        dataloader_num_workers: DataLoader worker processes (``memory`` loader; the
            ``stream`` loader builds batches on a thread of its own).
        resume: continue from the last checkpoint in ``out_dir/checkpoints`` when there is one.
        loader: ``stream`` (read each dataset a shuffled window at a time: memory bounded
            whatever the corpus size; under torchrun each global batch is split across
            the processes) or ``memory`` (every training row in RAM first, batches
            through sentence-transformers' map-style path; each process draws every
            N-th batch).
        shuffle_window: rows of a dataset the ``stream`` loader reads and shuffles
            together; it holds about two windows a dataset.
        gather_across_devices: under torchrun with the ``stream`` loader, score each
            anchor against the candidates of all processes (the whole global batch), as
            the 1B recipe did across TPU cores, rather than its own process's only.
        verify_shards: the shards' SHA-256 check: ``background`` (hashed on threads, a
            shard before its first use), ``upfront`` (all before the first step) or
            ``off``. Missing and truncated shards are refused before the first step
            either way.
        batch_log: a folder where each process appends one JSON line per batch it
            trains on (batch index, dataset, row numbers); ``stream`` loader only.
    """

    model: str | None = None
    batch_size: int = 128
    epochs: float = 1.0
    max_steps: int | None = None
    steps_per_epoch: int | None = None
    learning_rate: float = field(default=2e-5, metadata={"flag": "--lr"})
    warmup_steps: int = 500
    weight_decay: float = 0.01
    max_seq_length: int = 128
    loss: LossName = "mnrl"
    scale: float = 20.0
    mini_batch_size: int = 32
    pooling: str = "mean"
    normalize: bool = True
    precision: Precision = "auto"
    device: str | None = None
    seed: int = 42
    gradient_accumulation_steps: int = field(default=1, metadata={"flag": "--grad-accum"})
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    dataloader_num_workers: int = field(default=0, metadata={"flag": "--workers"})
    resume: bool = True
    loader: LoaderName = "stream"
    shuffle_window: int = 100_000
    gather_across_devices: bool = True
    verify_shards: VerifyShards = "background"
    batch_log: str | None = field(default=None, metadata={"metavar": "DIR"})

    def __post_init__(self) -> None:
        if self.loss not in ("mnrl", "cached_mnrl"):
            raise ValueError(f"loss must be mnrl or cached_mnrl, got {self.loss!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.loader not in ("stream", "memory"):
            raise ValueError(f"loader must be stream or memory, got {self.loader!r}")
        if self.verify_shards not in ("background", "upfront", "off"):
            raise ValueError(f"verify_shards must be background, upfront or off, got {self.verify_shards!r}")
        if self.batch_log is not None and self.loader != "stream":
            raise ValueError("batch_log needs the stream loader (loader='stream')")
        positive = ("batch_size", "shuffle_window", "max_seq_length", "save_steps", "logging_steps")
        for name in positive + ("gradient_accumulation_steps", "mini_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
