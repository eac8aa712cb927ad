"""What produced a result: the library versions every report and checkpoint records."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    import pytorch_lightning
    import torch
    import torchvision

    out = {
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
