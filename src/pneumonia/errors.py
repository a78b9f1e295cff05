"""The base class of the errors a user can fix, and how entry points report them."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad input or params: the message names the file, the param or the fix."""


def run_stage(main: Callable[[], None]) -> None:
    """Run an entry point; a user-fixable error prints one clear line and exits 2, not a
    traceback."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
