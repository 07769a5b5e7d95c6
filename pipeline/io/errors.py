"""The errors readers raise for inputs they cannot read.

In: nothing. Out: :class:`InputFileError` (a file that cannot be read to its end: that
file fails, the others complete) and :class:`InputLayoutError` (an input not laid out
as its source expects, found before anything is read: a usage error).
"""

from __future__ import annotations


class InputFileError(Exception):
    """An input file that cannot be read to its end (truncated or corrupt archive).

    The message names the file and where it broke; rows read before the break are kept.
    """


class InputLayoutError(InputFileError, ValueError):
    """An input that is not what its source reads: a missing companion file (SPECTER's
    ``metadata.json``, SentEval's ``s2.*``), a file name the source does not read, a
    folder where a file is expected.

    Found by :func:`pipeline.ingest.plan.check_inputs` before anything is written (the
    command exits 2); a ``ValueError`` too, so callers that catch usage errors catch it.
    """
