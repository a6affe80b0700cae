"""One lazy progress bar for every command that can run long (``scan``, ``convert``).

Only on an interactive stderr, and only once the work proves big (``after_total``) or slow
(``after_seconds``): pipes, CI logs and quick runs stay clean, and rich is not even imported.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["LazyBar"]


class LazyBar:
    """A rich bar that appears when the work is long enough to need one; a context manager."""

    def __init__(
        self, enabled: bool, label: str, *, after_total: int, after_seconds: float = 1.0
    ) -> None:
        self._enabled = enabled
        self._label = label
        self._after_total = after_total
        self._after_seconds = after_seconds
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> LazyBar:
        return self

    def update(self, done: int, total: int, description: str | None = None) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            big = total > self._after_total
            slow = time.monotonic() - self._started > self._after_seconds
            if not (big or slow):
                return
            from rich.console import Console
            from rich.progress import Progress

            bar = Progress(console=Console(stderr=True), transient=True)
            bar.start()
            self._task = bar.add_task(self._label, total=total)
            self._bar = bar
        assert self._task is not None
        if description is None:
            self._bar.update(self._task, completed=done)
        else:
            self._bar.update(self._task, completed=done, description=description)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
