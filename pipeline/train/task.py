"""The training task: a corpus and its data_config.json in, a trained sentence-transformer out.

In: a corpus root (docs/corpus-format.md), a data_config.json naming datasets of it
with integer weights (:mod:`pipeline.sampling`), an output folder and a
:class:`~pipeline.train.config.TrainConfig`. Out: in ``out_dir``, a model that loads
with ``SentenceTransformer(out_dir)`` (weights, tokenizer, modules, model card
README.md), a copy of the data_config.json it trained on, and ``train_config.json``
(the resolved config, its hash, the inputs' fingerprints and the run's result),
written last; and ``out_dir/checkpoints/checkpoint-<step>/`` while it runs.

The recipe is the 1B-pairs project's (the one behind all-MiniLM-L6-v2): every batch
comes from one dataset drawn with probability proportional to its weight, with no
duplicate text in a batch, MultipleNegativesRankingLoss with scale 20 (hard negatives
used when a dataset has them), AdamW at 2e-5 with linear warmup, 128 tokens, mean
pooling, normalized embeddings, 128 rows per device per batch. Only training shards
are read, never ``heldout/``.

Two loaders (``TrainConfig.loader``): ``stream``, the default
(:mod:`pipeline.train.stream`, :mod:`pipeline.train.loader`), reads each dataset a
shuffled window at a time, so memory does not grow with the corpus; ``memory`` reads
every row first and uses sentence-transformers' map-style path with
:class:`pipeline.sampling.batch_sampler.WeightedBatchSampler`.

A run killed midway resumes from its last checkpoint when the same command is run
again and sees the batches the killed one would have: the stream loader's position is
saved in each checkpoint and loaded back; the memory loader's order depends only on
the seed and the epoch, and the trainer skips the batches already trained. A finished
output folder whose train_config.json matches is not retrained.

Several GPUs: the same function runs in every process of a ``torchrun`` launch
(:mod:`pipeline.train.launch` starts one); rank 0 alone writes the model folder.

torch, transformers, datasets and sentence-transformers are imported inside functions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from pipeline.corpus.files import atomic_write_bytes, atomic_write_json, config_hash
from pipeline.corpus.manifest import library_versions
from pipeline.devices import gpu_visible, use_local_models_only
from pipeline.sampling.data_config import DATA_CONFIG_NAME
from pipeline.train.config import OPERATIONAL_FIELDS, TrainConfig
from pipeline.train.data import TrainingDataset, read_training_tables, training_datasets, training_fingerprints
from pipeline.train.verify import ShardVerifier, check_shards_present

TRAIN_CONFIG_NAME = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"


def build_model(config: TrainConfig):
    """The start model: a sentence-transformers folder as it is, or a Hugging Face folder
    with ``config.pooling`` pooling and, if asked, normalization."""
    use_local_models_only()
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from pipeline.embed.models import load_encoder, resolve_model_path

    path = resolve_model_path(config.model)
    if (path / "modules.json").is_file():
        model = load_encoder(path, device="cpu")
    else:
        no_remote_code = {"trust_remote_code": False}
        transformer = Transformer(
            str(path), max_seq_length=config.max_seq_length, model_kwargs=no_remote_code,
            processor_kwargs=no_remote_code, config_kwargs=no_remote_code,
        )  # fmt: skip
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=config.pooling)
        modules = [transformer, pooling] + ([Normalize()] if config.normalize else [])
        model = SentenceTransformer(modules=modules, device="cpu")
    model.max_seq_length = config.max_seq_length
    return model


def _resolve_precision(config: TrainConfig, use_gpu: bool) -> str:
    if config.precision != "auto":
        return config.precision
    import torch

    return "bf16" if use_gpu and torch.cuda.is_bf16_supported() else "fp32"


def _planned_steps(config: TrainConfig, batches_per_epoch: int, batches_per_step: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` passes of ``batches_per_epoch``
    batches, ``batches_per_step`` of them a step."""
    if config.max_steps:
        return config.max_steps
    per_epoch = max(1, batches_per_epoch // batches_per_step)
    return math.ceil(per_epoch * config.epochs)


def _run_fingerprint(config: TrainConfig, datasets: list[TrainingDataset]) -> dict[str, Any]:
    """What decides the run's result: the config, the start model and the data. Hashed."""
    from pipeline.embed.models import model_fingerprint, resolve_model_path

    return {
        "train": {k: v for k, v in asdict(config).items() if k not in OPERATIONAL_FIELDS}
        | {"model": str(resolve_model_path(config.model))},
        "model_fingerprint": model_fingerprint(config.model),
        "data_config": [d.entry.as_dict() for d in datasets],
        "datasets": training_fingerprints(datasets),
    }


def run_config_hash(corpus_dir: str | os.PathLike[str], data_config_path: str | os.PathLike[str], config: TrainConfig) -> str:
    """The config hash a run of :func:`train_model` on these inputs records (finished runs and checkpoints carry it)."""
    return config_hash(_run_fingerprint(config, training_datasets(corpus_dir, data_config_path)))


def is_main_process() -> bool:
    """True in the only process of a plain run and in rank 0 of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


def _trainer_class() -> type:
    """SentenceTransformerTrainer that saves model files on the main process only and can
    take its batches from the streaming loader.

    transformers 5 moved the "only the main process writes" check from
    ``Trainer.save_model`` into ``Trainer._save``, and sentence-transformers 6.2
    overrides ``_save`` without it, so under torchrun every rank would write the same
    model files (the final model and each checkpoint's) at once. Plain DDP saves need
    no collective call, so the other ranks can skip the write.

    With ``streaming_data`` set (a :class:`pipeline.train.loader.StreamingTrainData`),
    the training DataLoader is that loader's (not accelerate-prepared: each process
    already holds its own slice of each global batch) and each checkpoint also holds
    the loader's position after the batches trained so far.
    """
    from sentence_transformers import SentenceTransformerTrainer

    class PairforgeTrainer(SentenceTransformerTrainer):
        streaming_data: Any = None

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            if self.args.should_save:
                super()._save(output_dir, state_dict=state_dict)

        def get_train_dataloader(self) -> Any:
            if self.streaming_data is None:
                return super().get_train_dataloader()
            from pipeline.train.loader import streaming_dataloader

            self._train_dataloader = streaming_dataloader(self.streaming_data)
            return self._train_dataloader

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            if self.streaming_data is None or not self.args.should_save:
                return
            from pipeline.train.loader import LOADER_STATE_NAME

            state = self.streaming_data.state_dict()
            expected = self.state.global_step * self.args.gradient_accumulation_steps
            if state["batches"] != expected:
                raise RuntimeError(f"loader is at batch {state['batches']} at step {self.state.global_step}, expected {expected}")
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            atomic_write_json(folder / LOADER_STATE_NAME, state)

    return PairforgeTrainer


def _last_complete_checkpoint(checkpoints: Path, needs: Sequence[str]) -> Path | None:
    """The checkpoint of the highest step whose folder holds every file in ``needs``
    (one cut short by a kill during its save is passed over)."""
    found = []
    for folder in checkpoints.glob("checkpoint-*") if checkpoints.is_dir() else []:
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and folder.is_dir() and all((folder / name).is_file() for name in needs):
            found.append((int(step), folder))
    return max(found)[1] if found else None


def _check_resume(checkpoints: Path, run_hash: str, config: TrainConfig) -> str | None:
    """The checkpoint to resume from, after checking it belongs to this same run."""
    from transformers.trainer_utils import get_last_checkpoint

    from pipeline.train.loader import LOADER_STATE_NAME

    marker = checkpoints / TRAIN_CONFIG_NAME
    if (get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None) is None:
        return None
    if not config.resume:
        # starting over: stale checkpoints with higher step numbers would win the next resume
        if is_main_process():
            shutil.rmtree(checkpoints)
        return None
    if marker.is_file():
        previous = json.loads(marker.read_text(encoding="utf-8")).get("config_hash")
        if previous != run_hash:
            raise ValueError(
                f"{checkpoints} holds checkpoints of a different run (config hash {previous[:12]}, this run"
                f" {run_hash[:12]}): use another --out folder, or --no-resume to start over"
            )
    needs = ["trainer_state.json"] + ([LOADER_STATE_NAME] if config.loader == "stream" else [])
    last = _last_complete_checkpoint(checkpoints, needs)
    return None if last is None else str(last)


def _first_step_timer(started: float) -> Any:
    """A callback that records the seconds from ``started`` to the end of the first optimizer step."""
    from transformers import TrainerCallback

    class FirstStepTimer(TrainerCallback):
        seconds: float | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.seconds is None:
                self.seconds = round(time.perf_counter() - started, 3)

    return FirstStepTimer()


def _stream_features(datasets: list[TrainingDataset]) -> Any:
    """The trainer's view of a streamed run: each dataset's name and columns (its model card
    lists them), as ``datasets.IterableDataset`` objects that are never iterated."""
    from datasets import DatasetDict, Features, IterableDataset, Value

    def no_rows():
        yield from ()

    return DatasetDict(
        {
            d.entry.name: IterableDataset.from_generator(no_rows, features=Features({c: Value("string") for c in d.columns}))
            for d in datasets
        }
    )


def train_model(
    corpus_dir: str | os.PathLike[str],
    data_config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig = TrainConfig(),
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train a sentence-embedding model on a weighted mix of a corpus's datasets.

    Args:
        corpus_dir: the corpus root.
        data_config_path: a data_config.json naming datasets of that corpus.
        out_dir: the model folder to write (checkpoints go to ``out_dir/checkpoints``).
        config: the training configuration.
        callbacks: extra ``transformers.TrainerCallback`` objects (tests use one to stop a run midway).

    Returns:
        A summary: ``out_dir``, ``steps``, ``examples``, ``loss_first``, ``loss_last``,
        ``seconds``, ``resumed_from``, ``skipped``, ``config_hash``, ``datasets``.

    Raises:
        FileNotFoundError: the corpus, config, a shard or the start model is missing.
        ValueError: the config does not validate against the corpus, or the checkpoints
            in ``out_dir`` belong to a different run.

    Example::

        from pipeline import TrainConfig, train_model

        summary = train_model("corpus/", "corpus/data_config.json", "model/", TrainConfig(max_steps=1000, batch_size=64))
        print(summary["steps"], summary["loss_first"], summary["loss_last"])
    """
    started = time.perf_counter()
    out = Path(out_dir)
    checkpoints = out / CHECKPOINTS_DIR

    # 1. Data: validate the config against the corpus and its manifests (no row read yet).
    datasets = training_datasets(corpus_dir, data_config_path)
    fingerprint = _run_fingerprint(config, datasets)
    run_hash = config_hash(fingerprint)
    finished = out / TRAIN_CONFIG_NAME
    if finished.is_file():
        record = json.loads(finished.read_text(encoding="utf-8"))
        if record.get("config_hash") == run_hash:
            return record["result"] | {"out_dir": str(out), "skipped": True, "seconds": 0.0, "config_hash": run_hash}

    use_local_models_only()
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    resume_from = _check_resume(checkpoints, run_hash, config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    weights = [d.entry.weight for d in datasets]
    every_shard = [s for d in datasets for s in d.shards]
    check_shards_present(every_shard)  # missing or truncated shards fail here, before the model loads
    use_gpu = config.device != "cpu" and gpu_visible()
    # One process with several GPUs: the Trainer's DataParallel splits each batch across them.
    devices = torch.cuda.device_count() if use_gpu and world_size == 1 else 1
    global_batch = config.batch_size * max(1, devices) * world_size
    torch.manual_seed(config.seed)

    # 2. Model.
    model = build_model(config)

    # 3. Batches. stream: every process runs the same weighted stream of global batches
    # (batch_size x processes rows, one dataset each) and keeps its own slice; the
    # shards' hashes are checked on the first process of each machine, each shard before
    # its first use. memory: every row in RAM, sentence-transformers' map-style path with
    # the weighted batch sampler; accelerate hands each process every N-th batch.
    verifier = stream = trainer = None
    try:
        if config.loader == "stream":
            from pipeline.train.stream import BatchStream, first_use_order

            hashes_here = config.verify_shards != "off" and int(os.environ.get("LOCAL_RANK", "0")) == 0
            verifier = ShardVerifier(
                first_use_order(datasets, weights, config.seed), config.verify_shards if hashes_here else "off"
            )
            stream = BatchStream(
                datasets, weights, global_batch, seed=config.seed, window_rows=config.shuffle_window,
                multiple_of=world_size, verifier=verifier,
            )  # fmt: skip
            stream.prefetch()  # the first windows are read while the trainer starts
            train_dataset = _stream_features(datasets)
            batches_per_epoch = config.steps_per_epoch or stream.batches_per_pass
            planned = _planned_steps(config, batches_per_epoch, config.gradient_accumulation_steps)
            loader_args: dict[str, Any] = {"max_steps": planned, "ignore_data_skip": True}
        else:
            from datasets import Dataset, DatasetDict
            from datasets.table import InMemoryTable

            from pipeline.sampling.batch_sampler import WeightedSamplerFactory

            data = read_training_tables(datasets, config.verify_shards)
            train_dataset = DatasetDict({e.name: Dataset(InMemoryTable(t)) for e, t in zip(data.entries, data.tables)})
            batches_per_epoch = config.steps_per_epoch or sum(max(1, t.num_rows // config.batch_size) for t in data.tables)
            planned = _planned_steps(config, batches_per_epoch, world_size * config.gradient_accumulation_steps)
            loader_args = {
                "max_steps": config.max_steps or -1,
                "multi_dataset_batch_sampler": WeightedSamplerFactory(weights, num_batches=batches_per_epoch),
            }

        # 4. Loss: MNRL reads column 0 as the anchor and every later column as a candidate,
        # so hard negatives are used where a dataset has them.
        gather = config.gather_across_devices and world_size > 1 and config.loader == "stream"
        if config.loss == "cached_mnrl":
            loss = CachedMultipleNegativesRankingLoss(
                model, scale=config.scale, mini_batch_size=config.mini_batch_size, gather_across_devices=gather
            )
        else:
            loss = MultipleNegativesRankingLoss(model, scale=config.scale, gather_across_devices=gather)

        # 5. Arguments.
        precision = _resolve_precision(config, use_gpu)
        warmup = min(config.warmup_steps, planned // 10)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(checkpoints),
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            warmup_steps=warmup,
            weight_decay=config.weight_decay,
            optim="adamw_torch",
            lr_scheduler_type="linear",
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=not use_gpu,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=config.save_total_limit,
            logging_steps=config.logging_steps,
            logging_first_step=True,
            dataloader_num_workers=config.dataloader_num_workers if config.loader == "memory" else 0,
            dataloader_drop_last=False,
            report_to="none",
            disable_tqdm=False,
            **loader_args,
        )

        # 6. Trainer, then train (resuming when a checkpoint of this run exists).
        if is_main_process():
            atomic_write_json(checkpoints / TRAIN_CONFIG_NAME, {"config_hash": run_hash, "run": fingerprint})
        first_step = _first_step_timer(started)
        trainer = _trainer_class()(
            model=model, args=args, train_dataset=train_dataset, loss=loss, callbacks=[first_step, *callbacks]
        )
        if stream is not None:
            from pipeline.train.loader import LOADER_STATE_NAME, StreamingTrainData

            trainer.streaming_data = StreamingTrainData(
                stream, trainer.data_collator, rank=rank, world_size=world_size, batch_log=config.batch_log
            )
            if resume_from is not None:
                state = json.loads((Path(resume_from) / LOADER_STATE_NAME).read_text(encoding="utf-8"))
                if state.get("batch_size") != global_batch:
                    raise ValueError(
                        f"{resume_from} was saved with a global batch of {state.get('batch_size')} rows; this run's is"
                        f" {global_batch} ({config.batch_size} x {world_size} processes x {devices} GPUs a process):"
                        " resume with the same number of processes, or --no-resume to start over"
                    )
                trainer.streaming_data.load_state_dict(state)
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if trainer is not None and trainer.streaming_data is not None:
            trainer.streaming_data.close()
        if stream is not None:
            stream.close()
        if verifier is not None:
            verifier.close()
    verified = verifier.report() if verifier is not None else data.verify

    # 7. Save: the model (with its model card), the data config, then train_config.json last.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    steps = int(trainer.state.global_step)
    result = {
        "steps": steps,
        "examples": steps * config.batch_size * config.gradient_accumulation_steps * world_size,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "train_loss_mean": float(output.training_loss),
        "seconds_to_first_step": first_step.seconds,
        "datasets": {d.entry.name: {"lines": d.entry.lines, "weight": d.entry.weight} for d in datasets},
        "verify_shards": verified,
    }
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        text = json.dumps([d.entry.as_dict() for d in datasets], indent=4, ensure_ascii=False) + "\n"
        atomic_write_bytes(out / DATA_CONFIG_NAME, text.encode("utf-8"))
        resolved = {
            "config_hash": run_hash,
            "config": asdict(config) | {"model": fingerprint["train"]["model"]},
            "run": fingerprint,
            "resolved": {
                "precision": precision,
                "device": "cuda" if use_gpu else "cpu",
                "world_size": world_size,
                "loader": config.loader,
                "global_batch_size": global_batch,
                "gather_across_devices": gather,
                "batches_per_epoch": batches_per_epoch,
                "planned_steps": planned,
                "warmup_steps": warmup,
            },
            "result": result,
            "versions": library_versions("torch", "transformers", "sentence-transformers", "datasets"),
        }
        atomic_write_json(finished, resolved)
    return result | {
        "out_dir": str(out),
        "seconds": round(time.perf_counter() - started, 2),
        "resumed_from": resume_from,
        "skipped": False,
        "config_hash": run_hash,
    }
