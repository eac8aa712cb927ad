"""What produced a result: the code revision and the library versions every report and checkpoint records."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@cache
def code_revision() -> str:
    """The git commit of this checkout, with ``+uncommitted`` when tracked files differ from it; ``unknown``
    outside a git checkout (an installed copy) or without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def versions() -> dict[str, str]:
    import pytorch_lightning
    import torch
    import torchvision

    out = {
        "code": code_revision(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "pytorch_lightning": str(pytorch_lightning.__version__),
    }
    try:  # read from the installed package, without importing Ray (train and evaluate run without it)
        out["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:  # pragma: no cover - ray is a dependency
        out["ray"] = "not installed"
    return out
