"""The built-in demo data: the phantom set of ``modules.phantom``, generated once into a cache folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from modules.phantom import VERSION, make_phantom

DEMO_PHANTOM = {"n_per_class": 60, "size": 128, "seed": 0}


def demo_data_dir(cache: str | os.PathLike | None = None) -> Path:
    """The built-in phantom set, generated once (deterministically) into a cache folder, atomically.

    ``cache``: the folder that holds it (default: ``$MRI_TUNE_CACHE``, else ``results/.cache``)."""
    base = Path(cache or os.environ.get("MRI_TUNE_CACHE") or Path("results") / ".cache")
    p = DEMO_PHANTOM
    # the generator's VERSION is in the name: a new generator makes a new set, never reuses an old one
    target = base / f"phantom-v{VERSION}-n{p['n_per_class']}-s{p['size']}-seed{p['seed']}"
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".phantom-", dir=base))
    try:
        make_phantom(tmp, n_per_class=p["n_per_class"], size=p["size"], seed=p["seed"])
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another process may have won the race; anything else is an error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
