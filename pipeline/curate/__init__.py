"""Curation steps that judge pairs: a dataset folder in, the rows that pass out."""
