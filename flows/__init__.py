"""Prefect flows of pairforge, and the ``pairforge`` command line: thin wiring of ``pipeline``.

Flows: ``flows.ingest`` (build-corpus), ``flows.mine`` (mine-negatives),
``flows.data_config`` (write-config), ``flows.train``, ``flows.evaluate``, the parent
``flows.parent_flow`` and ``flows.verify``; ``flows.runners`` picks the task runner
(threads or Dask). Each flow runs the library's own units as tasks; decisions (skip an
unchanged stage, what counts as dropped) belong to the library and its manifests, and
flows only pass paths and configs between stages and publish artifacts.

``flows.cli`` is the ``pairforge`` command: its options are generated from the
library's config dataclasses (``flows.config_options``). The library never imports
this package.
"""
