"""``python -m tuning.predict --checkpoint CKPT IMAGE_OR_FOLDER...``: label new scans, with a heat map of the
evidence.

For each image (folders are walked recursively; symlinks leaving a given folder are refused; a DICOM file
gives one image per frame and a NIfTI volume its ``--slices``, named ``FILE#frame-001``, ``FILE#axial-045``)
it prints and writes to ``--out``/``predictions.csv`` the probability of every class (``prob_<class>``) and the
label: for a two-class model the positive class (a tumour) where its probability (``probability``) reaches
``--threshold``, for a model of more classes the most probable class. It writes ``heatmaps/<n>-<name>.png``:
the Grad-CAM map over the scan, at the scan's own size, of the class named in ``heatmap_class``: the positive
class of a two-class model (where the evidence for a tumour lies), the predicted class of a model of more
classes. Images are decoded exactly as the training data were (content-based format, explicit grayscale, the
same DICOM windows and NIfTI orientation). Files that cannot be read are listed with the reason, in the table
and in the CSV, and the others are still labelled.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tuning.cli import output_folder, run_main, set_threads
from tuning.data_options import DataOptions
from tuning.flags import add_flags, values_of
from tuning.prediction import format_table, run_prediction

DATA_FLAGS = ["slice_axis", "slices"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by tuning.train or tuning.search")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files (JPEG, PNG, DICOM, NIfTI) and/or folders of them",
    )
    add_flags(p, DataOptions, groups={}, only=DATA_FLAGS)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="two-class models: probability of the positive class from which an image gets that label "
        "(default: 0.5); models of more classes give the most probable class",
    )
    p.add_argument(
        "--no-heatmaps", action="store_true", help="skip the Grad-CAM heat maps (default: write them)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--out", default=None, help="folder to write (default: results/predict-<timestamp>/)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing predictions.csv")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    opts = DataOptions(**values_of(args, DataOptions, only=DATA_FLAGS))
    opts.check_data_options()
    out = output_folder(args.out, "predict", marker="predictions.csv", overwrite=args.overwrite)
    set_threads(args.threads)
    command = "python -m tuning.predict " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows, meta = run_prediction(
        args.checkpoint,
        args.inputs,
        out,
        threshold=args.threshold,
        heatmaps=not args.no_heatmaps,
        command=command,
        choice=opts.choice,
    )
    print(format_table(rows, list(meta["classes"])))
    bad = sum(1 for r in rows if r["error"])
    rule = (
        f"threshold {args.threshold} on P({meta['positive_class']})"
        if meta["positive_class"] is not None
        else "the most probable class"
    )
    print(f"\n{len(rows) - bad} labelled, {bad} unreadable; {rule}")
    print(f"written: {out}/predictions.csv" + ("" if args.no_heatmaps else f", {out}/heatmaps/"))
    return 0 if bad < len(rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
