"""Progress bars on stderr (tqdm), or nothing when progress is off."""
from __future__ import annotations

import sys


class ProgressBar:
    """tqdm on stderr with images/s and ETA, or nothing when not ``enabled``:
    ``with ProgressBar(total, label, enabled) as bar: bar.update(n)``."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, smoothing=0.1,
                            dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def to(self, position: int) -> None:
        """Move the bar forward to ``position`` (never back)."""
        if self.bar is not None and position > self.bar.n:
            self.bar.update(position - self.bar.n)

    def write(self, line: str, file=None) -> None:
        """Print ``line`` (to stdout, or ``file``) on its own line, above the bar."""
        if self.bar is not None:
            self.bar.write(line, file=file or sys.stdout)
        else:
            print(line, file=file or sys.stdout)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def bytes_bar(name: str, total: int | None, initial: int, enabled: bool):
    """A tqdm bar in bytes (downloads, extraction) on stderr; disabled when not ``enabled``."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=not enabled, leave=True)
