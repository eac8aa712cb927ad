"""``python -m tuning.data [PATH]``: inspect a data set: counts, formats, skipped files, duplicates, the split."""

from __future__ import annotations

import argparse
import json
import sys

from modules.dataset import resolve_data
from modules.duplicates import DEFAULT_THRESHOLD
from modules.files import atomic_write_text
from tuning.cli import run_main, warn
from tuning.data_options import DataOptions
from tuning.flags import add_flags, values_of
from tuning.formatting import data_report

FLAGS = ["positive_class", "strict", "must_link", "groups", "slice_axis", "slices"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.data", description=__doc__)
    p.add_argument(
        "path",
        nargs="?",
        default=None,
        help="folder with one sub-folder per class, two or more (e.g. yes/ and no/; optionally inside one "
        "wrapping folder) or a .zip of one, of JPEG, PNG, DICOM and NIfTI files; default: the built-in "
        "synthetic phantom set",
    )
    groups = {"data": p.add_argument_group("data")}
    add_flags(p, DataOptions, groups=groups, only=FLAGS)
    g = groups["data"]
    g.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    g.add_argument(
        "--val-fraction", type=float, default=0.15, help="share of images for validation (default: 0.15)"
    )
    g.add_argument(
        "--test-fraction", type=float, default=0.15, help="share of images for test (default: 0.15)"
    )
    g.add_argument(
        "--near-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"thumbnail correlation at which two images count as near copies (default: {DEFAULT_THRESHOLD})",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", action="store_true", help="print the summary as JSON (default: a readable report)"
    )
    o.add_argument(
        "--write-split", metavar="CSV", default=None, help="also write split.csv here (default: no)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    opts = DataOptions(**values_of(args, DataOptions, only=FLAGS))
    fractions = (1.0 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction)
    data = resolve_data(
        args.path,
        seed=args.seed,
        fractions=fractions,
        strict=opts.strict,
        threshold=args.near_threshold,
        positive_class=opts.positive_class,
        must_link=opts.must_link,
        groups=opts.groups,
        choice=opts.choice,
        warn=warn,
    )
    if args.write_split:
        atomic_write_text(args.write_split, data.split_csv())
    if args.json:
        json.dump(data.summary(), sys.stdout, indent=2)
        print()
    else:
        print(data_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
