"""Embeddings: the layer mining and every model-based curation step stand on.

In: texts and a local model folder. Out: float32 unit vectors, cached on disk by
model and text, and FAISS searches over them.

* :mod:`.models`: where models come from (the packaged all-MiniLM-L6-v2, local
  folders, never a download), their fingerprints;
* :mod:`.encoders`: the encoder switch (numpy on a CPU for plain BERT models, torch
  otherwise) and the one batch plan every caller encodes with;
* :mod:`.numpy_bert`: the torch-free BERT encoder;
* :mod:`.cache`: the embedding cache and the search cache;
* :mod:`.embedder`: :class:`~pipeline.embed.embedder.Embedder`, texts in, cached vectors out;
* :mod:`.index`: FAISS indexes (exact, IVF on disk, HNSW) and search.
"""
