"""Shared command-line plumbing: clear one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path


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


def output_folder(out: str | None, kind: str, *, marker: str, overwrite: bool) -> Path:
    """``--out``, or ``results/<kind>-<timestamp>/``; refused when it already holds ``marker`` (unless
    ``overwrite``), so that a finished result is never replaced silently."""
    path = Path(out) if out else Path("results") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if (path / marker).exists() and not overwrite:
        raise ValueError(f"{path} already holds a {marker}; choose another --out or pass --overwrite")
    return path


def set_threads(threads: int) -> None:
    """Torch's CPU threads (``--threads``, or a config's ``threads``); 0 keeps torch's default."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
