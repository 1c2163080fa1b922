"""The one error type users see, and how a command turns it into a message and an exit code."""
from __future__ import annotations

import sys
from typing import Callable, Iterable

#: Problems listed one by one in an error that names them all; the rest are counted.
MAX_REPORTED = 20


class PipelineError(Exception):
    """A problem the user can fix; its message says which file or key and what to do."""


class UsageError(PipelineError):
    """A command called wrongly (an option out of range, no input): exit code 2, as argparse's own."""


def capped_list(items: Iterable[str], limit: int = MAX_REPORTED) -> str:
    """``items`` as indented lines (each starting with a newline), the first ``limit`` of them,
    then "... and N more"."""
    items = list(items)
    shown = "".join(f"\n  {item}" for item in items[:limit])
    return shown + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` and turn expected failures into a one-line error and exit code."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, UsageError) else 1)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; rerun to resume", file=sys.stderr)
        sys.exit(130)
