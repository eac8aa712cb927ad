"""What produced a result: the code revision and the library versions every report and checkpoint records."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# every library whose code shapes a number in a report: training, metrics, decoding, the search
CORE_LIBRARIES = ("torchmetrics", "numpy", "scikit-learn", "pillow", "ray")


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


def package_version(name: str) -> str:
    """The installed version of a distribution, read from its metadata (nothing is imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(*used: str) -> dict[str, str]:
    """The code revision, Python, and the exact version of every core library, plus those named in ``used``
    (the optional ones a run used: ``optuna`` for a TPE search, ``mlflow`` for tracking, ``onnx`` ...)."""
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
    # read from the installed packages, without importing them (train and evaluate run without Ray)
    for name in (*CORE_LIBRARIES, *used):
        out[name.replace("-", "_")] = package_version(name)
    return out
