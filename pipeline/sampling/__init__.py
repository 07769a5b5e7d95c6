"""Sampling: how often each dataset is trained on.

In: a corpus's manifests and a weight policy. Out: ``data_config.json``
(``[{name, lines, weight}]``, the 1B-pairs project's format) and the batch sampler
that draws every batch from one dataset, by weight.

* :mod:`.policies`: weight policies (proportional, temperature, uniform, explicit, caps);
* :mod:`.data_config`: writing and validating data_config.json;
* :mod:`.batch_sampler`: the weighted one-dataset-per-batch sampler, no text twice in a batch.
"""

from pipeline.sampling.data_config import DataConfigEntry, load_data_config, write_data_config
from pipeline.sampling.policies import WeightPolicy

__all__ = ["DataConfigEntry", "WeightPolicy", "load_data_config", "write_data_config"]
