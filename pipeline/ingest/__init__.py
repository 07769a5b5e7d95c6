"""Ingest: raw source files in, clean deduplicated Parquet datasets out.

In: a source name (``nli``, ``reddit``...), its input files and an
:class:`~pipeline.ingest.config.IngestConfig`. Out: one folder per dataset under the
corpus folder holding train shards, held-out shards, ``quarantine.jsonl`` and
``manifest.json`` (written last), as docs/corpus-format.md describes.

The rooms, in the order the rows pass through them:

* :mod:`.sources`: one module per source, mapping a raw row to a pair (registered by hand);
* :mod:`.plan`: the units of an ingest (stage each file, finalize the source) and
  :func:`~pipeline.ingest.plan.ingest_source`, which runs them in this process (flows/ingest.py runs the same units
  as Prefect tasks);
* :mod:`.stage`: ONE input file read with its source and spilled to
  ``<out>/.staging/<source>/<n>/`` (a staged file whose input hash and config are
  unchanged is reused, so a killed run resumes);
* :mod:`.normalize`: text cleaning and row filters, each drop a named reason;
* :mod:`.build`: one dataset's rows cleaned, split, deduplicated (:mod:`.dedup`) and
  written, manifest last;
* :mod:`.finalize`: the staged files of a source joined into each dataset's candidates.
"""

from pipeline.ingest.config import IngestConfig, planned_datasets, source_options
from pipeline.ingest.plan import IngestPlan, IngestResult, StageUnit, ingest_source, plan_ingest

__all__ = ["IngestConfig", "IngestPlan", "IngestResult", "StageUnit", "ingest_source", "plan_ingest", "planned_datasets", "source_options"]
