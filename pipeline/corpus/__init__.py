"""The on-disk contract of a corpus, written once: what every stage reads and writes.

A corpus is a folder of dataset folders. A dataset folder holds training shards
``part-00000.parquet``..., held-out shards under ``heldout/``, ``quarantine.jsonl``
(bad input rows: file, line, reason, first bytes) and ``manifest.json``, written last.

* :mod:`pipeline.corpus.schema`: the record type, the columns and their order, the
  Arrow schemas;
* :mod:`pipeline.corpus.manifest`: the typed :class:`~pipeline.corpus.manifest.Manifest`
  and its accounting rule (``rows_read == rows_kept + sum(dropped)``), drop tallies;
* :mod:`pipeline.corpus.shards`: the atomic Parquet shard writer;
* :mod:`pipeline.corpus.folders`: dataset names that cannot escape the root, discovery;
* :mod:`pipeline.corpus.files`: atomic files, content and config hashes;
* :mod:`pipeline.corpus.locks`: one writer per output folder (``writer_lock``).

docs/corpus-format.md describes the files field by field.
"""
