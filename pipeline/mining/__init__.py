"""Hard-negative mining: a pair dataset folder in, a triplet dataset folder out.

In: a dataset folder (``part-*.parquet`` shards with ``anchor, positive[, negative],
id, source_file, source_line`` and a ``manifest.json``, see docs/corpus-format.md;
the ``heldout/`` split is never read), optional extra corpus shards, a local
sentence-transformers model and a :class:`~pipeline.mining.config.MiningConfig`. Out: a
dataset folder of triplet shards (``anchor, positive, negative`` or ``negative_1 ..
negative_k``) and a manifest with stage ``mine``, the drop accounting and the mining
statistics.

The steps, each counting what it drops:

1. :mod:`.texts`: read the training pairs, normalize every text and give each
   distinct text an id;
2. embed each distinct text once (anchors and corpus share one table), reading what
   the on-disk embedding cache already holds and encoding the rest in
   token-length-sorted batches (:mod:`pipeline.embed`); the embeddings live in a
   memory-mapped file;
3. index the corpus with FAISS, chosen by size (:mod:`pipeline.embed.index`), and
   search once for all distinct anchors;
4. :mod:`.select`: pick negatives with sentence-transformers' ``mine_hard_negatives``
   semantics behind a false-negative guard;
5. :mod:`.output`: write the shards, then the manifest.

:mod:`.job` runs them as three units (prepare, encode slices, finish) that a flow can
spread over a cluster, or all in this process (:func:`mine_negatives`).
torch, faiss and sentence-transformers are imported inside the functions that use
them; the model is not even loaded when every embedding is cached.
"""

from pipeline.mining.config import MiningConfig
from pipeline.mining.job import MiningJob, encode_slice, finish_mining, mine_negatives, prepare_mining

__all__ = ["MiningConfig", "MiningJob", "encode_slice", "finish_mining", "mine_negatives", "prepare_mining"]
