"""Prefect flows of pairforge: thin wiring of ``pipeline`` functions into tasks.

``flows.build_corpus`` (ingest, mine, write_config), ``flows.train``,
``flows.evaluate``, the parent ``flows.parent_flow`` and ``flows.verify``. Decisions
(skip an unchanged stage, what counts as dropped) belong to the library and its
manifests; flows only pass paths and configs between stages and publish artifacts.
"""
