"""Training: a corpus and its data_config.json in, a trained sentence-embedding model out.

* :mod:`.config`: :class:`~pipeline.train.config.TrainConfig`, saved with its hash in the model folder;
* :mod:`.data`: each dataset's training shards, validated against its manifest, and the
  in-memory loader (every row in RAM);
* :mod:`.verify`: the shard checks (present, whole, row counts, SHA-256 up front or in the background);
* :mod:`.stream`: the streaming loader's readers and weighted global batch stream
  (memory bounded whatever the corpus size, resumable from a small state);
* :mod:`.loader`: that stream on the trainer's side (each process's slice, tokenized
  ahead, its position saved in checkpoints);
* :mod:`.task`: :func:`~pipeline.train.task.train_model`, the 1B-pairs recipe on
  sentence-transformers' trainer (one dataset per batch, by weight; resumable);
* :mod:`.launch`: in this process, or under torchrun with one process per GPU
  (:mod:`.worker` is what each process runs).
"""

from pipeline.train.config import TrainConfig
from pipeline.train.task import train_model

__all__ = ["TrainConfig", "train_model"]
