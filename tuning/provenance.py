"""What produced a result: the library versions every report and checkpoint records."""

from __future__ import annotations

import platform


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
    try:
        import ray

        out["ray"] = str(ray.__version__)
    except ImportError:  # pragma: no cover - ray is a dependency, but train/evaluate do not need it
        out["ray"] = "not installed"
    return out
