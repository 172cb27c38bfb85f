"""How every command line of the project ends an error: `desta-audio`, `build_dataset.py` and `train_sft.py`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DEBUG_ENV = "DESTA_AUDIO_DEBUG"
# A user's mistake (a missing file, a bad value): one line, exit code 2. Anything else: one line, exit code 1.
USER_ERRORS = (FileNotFoundError, ValueError, OSError)


def report_errors(prog: str, run: Callable[[], int | None], debug: bool = False) -> int:
    """Run `run()` and end the way every command line of the project does: a user error is one line
    `PROG: error: ...` on stderr and exit code 2, anything else one line and exit code 1. `debug` (--debug, or
    DESTA_AUDIO_DEBUG=1) lets the error through, traceback and all."""
    try:
        return run() or 0
    except Exception as error:
        if debug or os.environ.get(DEBUG_ENV):
            raise
        message = " ".join(str(error).split())  # one line, even for a library's multi-line message
        if isinstance(error, USER_ERRORS):
            sys.stderr.write(f"{prog}: error: {message}\n")
            return 2
        sys.stderr.write(f"{prog}: error: {type(error).__name__}: {message} (pass --debug for details)\n")
        return 1
