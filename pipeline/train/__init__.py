"""Training: a corpus and its data_config.json in, a trained sentence-embedding model out.

* :mod:`.config`: :class:`~pipeline.train.config.TrainConfig`, saved with its hash in the model folder;
* :mod:`.data`: each dataset's training rows, validated against its manifest;
* :mod:`.task`: :func:`~pipeline.train.task.train_model`, the 1B-pairs recipe on
  sentence-transformers' trainer (one dataset per batch, by weight; resumable);
* :mod:`.launch`: in this process, or under torchrun with one process per GPU
  (:mod:`.worker` is what each process runs).
"""

from pipeline.train.config import TrainConfig
from pipeline.train.task import train_model

__all__ = ["TrainConfig", "train_model"]
