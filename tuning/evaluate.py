"""``python -m tuning.evaluate --checkpoint CKPT --data PATH``: score a saved model on another labelled set.

The set (a folder with the checkpoint's class folders, e.g. yes/ and no/, or a .zip of one) is ingested with the
same validation as training; a two-class model is scored on its checkpoint's positive class, a model of more
classes one-vs-rest (macro and per-class recall, precision, ROC AUC). ``--exclude-duplicates-of REF`` first drops the images that are exact or near
copies of an image of REF (e.g. the training data), since a copy of a training image is no test. Writes into
``--out``: ``report.json`` (kind "evaluate", the shape of tuning.train's), ``predictions.csv`` (one row per
scored image, with the probability of every class), ``confusion_matrix.png`` and ``roc.png``, and prints a
short summary.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from modules.duplicates import DEFAULT_THRESHOLD
from tuning.cli import output_folder, run_main, set_threads, warn
from tuning.data_options import DataOptions
from tuning.evaluation import evaluation_summary, run_evaluation
from tuning.flags import add_flags, values_of

DATA_FLAGS = ["groups", "slice_axis", "slices"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        metavar="CKPT",
        help="model.pt written by tuning.train or tuning.search; several: an ensemble scored by the mean of "
        "their class probabilities (e.g. the fold-<n>/model.pt of a cross-validation)",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        help="labelled set to score: a folder with the model's class folders (e.g. yes/ and no/), or a .zip; "
        "JPEG, PNG, DICOM and NIfTI files",
    )
    d.add_argument("--strict", action="store_true", help="refuse bad image files instead of skipping them")
    d.add_argument(
        "--exclude-duplicates-of",
        metavar="PATH",
        default=None,
        help="drop images that are exact or near copies of an image of this set, e.g. the training data "
        "(default: keep all)",
    )
    d.add_argument(
        "--near-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"thumbnail correlation at which two images count as near copies (default: {DEFAULT_THRESHOLD})",
    )
    add_flags(p, DataOptions, groups={"data": d}, only=DATA_FLAGS)
    m = p.add_argument_group("scoring")
    m.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="two-class models: probability of the positive class from which it is predicted (default: 0.5); "
        "models of more classes predict the most probable class",
    )
    m.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="folder to write (default: results/evaluate-<timestamp>/)")
    o.add_argument("--overwrite", action="store_true", help="allow replacing an existing report.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    opts = DataOptions(**values_of(args, DataOptions, only=DATA_FLAGS))
    opts.check_data_options()
    out = output_folder(args.out, "evaluate", marker="report.json", overwrite=args.overwrite)
    set_threads(args.threads)
    command = "python -m tuning.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = run_evaluation(
        args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0],
        args.data,
        out,
        strict=args.strict,
        exclude_duplicates_of=args.exclude_duplicates_of,
        near_threshold=args.near_threshold,
        threshold=args.threshold,
        batch_size=args.batch_size,
        command=command,
        warn=warn,
        groups=opts.groups,
        choice=opts.choice,
    )
    print(evaluation_summary(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
