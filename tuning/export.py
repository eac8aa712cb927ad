"""``python -m tuning.export --checkpoint CKPT --format onnx|torchscript --out FILE``: export a trained model to
run elsewhere (an inference server, a browser, LibTorch).

The whole network and a softmax are exported: input ``image``, a float32 (N, 3, S, S) tensor, output
``probabilities`` (N, classes). ``FILE.json`` beside it describes the preprocessing that turns a scan into that
tensor (grayscale, head crop, resize, centre crop, scaling, 3 channels, mean/std), the class names and the
positive class, the ResNet50 weights layout, the checkpoint it came from and the library versions. The written
file is then run (onnxruntime for ONNX, torch.jit.load for TorchScript) on sample scans (``--images``, or
synthetic phantom slices) beside the checkpoint's network in PyTorch; the last line printed is
``max_abs_diff=<the largest difference of a class probability>``, and the exit code is 1 when it exceeds
``--tolerance``. A file that is not a checkpoint of this project is refused with one line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from tuning.cli import run_main, set_threads
from tuning.model_export import FORMATS, description_path, export_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by tuning.train or tuning.search")
    p.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS,
        help="onnx (torch.export-based exporter, run with onnxruntime) or torchscript (torch.jit.trace; "
        "deprecated by PyTorch, for runtimes that load it) (default: onnx)",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the exported file; FILE.json is written beside it"
    )
    p.add_argument(
        "--images",
        nargs="+",
        default=None,
        metavar="IMAGE_OR_FOLDER",
        help="scans to check the export on (default: synthetic phantom slices)",
    )
    p.add_argument(
        "--samples", type=int, default=8, help="phantom slices to check on without --images (default: 8)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest probability difference to PyTorch accepted; above it the exit code is 1 (default: 1e-4)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    if (out.exists() or description_path(out).exists()) and not args.overwrite:
        raise ValueError(
            f"{out} (or {description_path(out).name}) exists; choose another --out or pass --overwrite"
        )
    set_threads(args.threads)
    command = "python -m tuning.export " + shlex.join(argv if argv is not None else sys.argv[1:])
    d = export_model(
        args.checkpoint,
        args.format,
        out,
        images=args.images,
        samples=args.samples,
        tolerance=args.tolerance,
        command=command,
    )
    check = d["check"]
    print(
        f"exported {d['model']['kind']} ({', '.join(d['classes'])}) to {out} ({args.format}); description: {description_path(out)}"
    )
    print(
        f"input {d['input']['name']} {json.dumps(d['input']['shape'])} float32, output {d['output']['name']} {json.dumps(d['output']['shape'])}"
    )
    print(
        f"checked with {check['runtime']} on {check['inputs']}: {'passed' if check['passed'] else 'FAILED'} (tolerance {check['tolerance']:g})"
    )
    print(f"max_abs_diff={check['max_abs_diff']:.3g}")
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
