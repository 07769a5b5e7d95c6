"""pairforge's library: raw text dumps in, sentence-pair Parquet corpora, mined
negatives, a weighted data_config.json, a trained and evaluated model out.

Plain Python: nothing in this package imports Prefect (``flows/`` wires it).
"""

__version__ = "0.1.0"
