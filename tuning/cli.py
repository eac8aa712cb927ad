"""Shared command-line plumbing: clear one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``: bad input (``ValueError``, missing files, permissions) becomes one
    ``error: ...`` line and exit 2; an environment failure (disk full, I/O error) one ``error:`` line and exit 1."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment failed (disk full, I/O error): say so, no traceback; exit 1
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 1


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
