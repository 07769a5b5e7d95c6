"""Progress bars for long work, or a silent stand-in.

In: a total, a label, whether to show it. Out: a tqdm bar (to stderr) or an object
with the same ``update``/context-manager face that prints nothing and never imports
tqdm (``tqdm.auto`` pulls in asyncio, which a quiet run does not need).
"""

from __future__ import annotations

from typing import Any, Self


class _NoBar:
    def update(self, _n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "query") -> Any:
    """A tqdm bar of ``total`` ``unit`` s labelled ``desc``, or a silent stand-in when not ``enabled``."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
