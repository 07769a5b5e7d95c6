"""The error every reader raises for an input it cannot read to its end.

In: nothing. Out: :class:`InputFileError`.
"""

from __future__ import annotations


class InputFileError(Exception):
    """An input file that cannot be read to its end (truncated or corrupt archive).

    The message names the file and where it broke; rows read before the break are kept.
    """
