"""Generic file formats, kept apart from what a source makes of a row.

In: input files as distributed (plain, ``.gz``, ``.zst`` with Pushshift's 2 GiB
window; JSON lines, TSV/CSV, text lines, whole JSON documents). Out: polars batches of
raw rows with a ``_line`` column, every unreadable row counted under a reason and
quarantined through a :class:`~pipeline.io.context.ReadContext`, and the spill files
and hash partitions that keep the later stages' memory flat.

* :mod:`.context`: the reading context (bounds, reader strategy, tallies);
* :mod:`.compression`, :mod:`.digest`: decompression, and hashing while reading;
* :mod:`.lines`: chunks of whole lines, text lines;
* :mod:`.jsonl`: JSON lines (one-pass DuckDB, chunked polars/pyarrow, any values);
* :mod:`.delimited`, :mod:`.documents`: TSV/CSV, whole JSON documents;
* :mod:`.parallel`: an ordered thread map;
* :mod:`.spill`: Arrow batch files and key partitions on disk.

No module here knows a source; sources (:mod:`pipeline.ingest.sources`) map rows to pairs.
"""
