"""The one error type users see, and how a command turns it into a message and an exit code."""
from __future__ import annotations

import sys
from typing import Callable


class PipelineError(Exception):
    """A problem the user can fix; its message says which file or key and what to do."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` and turn expected failures into a one-line error and exit code."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; rerun to resume", file=sys.stderr)
        sys.exit(130)
