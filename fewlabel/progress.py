"""Progress on stderr: a tqdm bar on a terminal, plain lines in a log, or nothing when off."""
from __future__ import annotations

import sys
import time

# Into a log (stderr not a terminal): one progress line at most this often, and one at the end.
PLAIN_SECONDS = 30.0


class ProgressBar:
    """tqdm on stderr with images/s and ETA when stderr is a terminal; when it is not (output
    redirected to a log), a whole line now and then instead, since a bar's carriage returns
    would share lines with the per-image lines; nothing when not ``enabled``:
    ``with ProgressBar(total, label, enabled) as bar: bar.update(n)``."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.bar = None
        self.plain = enabled and not sys.stderr.isatty()
        self.total, self.label, self.n = total, label, 0
        self.start = self.printed = time.monotonic()
        if enabled and not self.plain:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, smoothing=0.1,
                            dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain and time.monotonic() - self.printed >= PLAIN_SECONDS:
            self._line()

    def to(self, position: int) -> None:
        """Move the bar forward to ``position`` (never back)."""
        if position > self.n:
            self.update(position - self.n)

    def write(self, line: str, file=None) -> None:
        """Print ``line`` (to stdout, or ``file``) on its own line, above the bar."""
        if self.bar is not None:
            self.bar.write(line, file=file or sys.stdout)
        else:
            print(line, file=file or sys.stdout)

    def _line(self) -> None:
        self.printed = now = time.monotonic()
        rate = self.n / (now - self.start) if now > self.start else 0.0
        sys.stdout.flush()  # the lines printed before it come first in a shared log
        print(f"{self.label}: {self.n}/{self.total} images ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{rate:.1f} images/s", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        elif self.plain:
            self._line()


def bytes_bar(name: str, total: int | None, initial: int, enabled: bool):
    """A tqdm bar in bytes (downloads, extraction) on stderr; off when not ``enabled``, and when
    stderr is not a terminal (a log file gets no carriage returns)."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=None if enabled else True, leave=True)
