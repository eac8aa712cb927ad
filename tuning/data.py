"""``python -m tuning.data [PATH]``: inspect a data set: counts, formats, skipped files, duplicates, the split."""

from __future__ import annotations

import argparse
import json
import sys

from modules.dataset import PreparedData, resolve_data
from modules.duplicates import DEFAULT_THRESHOLD
from modules.split import SPLITS
from tuning.cli import add_positive_class_flag, run_main, warn
from tuning.files import atomic_write_text


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.data", description=__doc__)
    p.add_argument(
        "path",
        nargs="?",
        default=None,
        help="folder with one sub-folder per class, two or more (e.g. yes/ and no/; optionally inside one "
        "wrapping folder) or a .zip of one; default: the built-in synthetic phantom set",
    )
    add_positive_class_flag(p)
    p.add_argument(
        "--json", action="store_true", help="print the summary as JSON (default: a readable report)"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    p.add_argument(
        "--val-fraction", type=float, default=0.15, help="share of images for validation (default: 0.15)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.15, help="share of images for test (default: 0.15)"
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse bad files instead of skipping them (default: skip)"
    )
    p.add_argument(
        "--near-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"thumbnail correlation at which two images count as near copies (default: {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--write-split", metavar="CSV", default=None, help="also write split.csv here (default: no)"
    )
    return p


def format_report(data: PreparedData) -> str:
    s = data.summary()
    lines = [
        f"data: {s['source']}" + ("  (SYNTHETIC phantom set, not real scans)" if s["synthetic"] else ""),
        f"fingerprint: {s['fingerprint']}",
        f"files: {s['files']}  " + "  ".join(f"{c}: {n}" for c, n in s["classes"].items()),
        f"classes: {len(s['classes'])}; "
        + (
            f"positive class: {s['positive_class']}"
            if s["positive_class"] is not None
            else "scored one-vs-rest (no positive class)"
        ),
        "formats: " + ", ".join(f"{k} {v}" for k, v in s["formats"].items()),
        "modes: " + ", ".join(f"{k} {v}" for k, v in s["modes"].items()),
        f"skipped: {len(s['skipped'])}",
        *[f"  {item['path']}: {item['reason']}" for item in s["skipped"]],
        f"exact duplicate groups: {s['exact_duplicate_groups']} ({s['exact_duplicate_files']} files)",
        f"duplicate clusters (exact + near): {s['duplicate_clusters']} ({s['duplicate_cluster_files']} files)",
        f"groups: {s['groups']}; groups across splits: {s['groups_across_splits']}",
        f"split (seed {s['split_seed']}, fractions {s['split_fractions']}):",
    ]
    classes = list(s["classes"])
    lines.append(f"  {'split':<6}" + "".join(f"{c:>8}" for c in classes) + f"{'total':>8}  majority baseline")
    for name in SPLITS:
        counts = s["split"][name]
        base = s["majority_baseline"][name]
        lines.append(
            f"  {name:<6}" + "".join(f"{counts[c]:>8}" for c in classes) + f"{sum(counts.values()):>8}"
            f"  {base['accuracy']:.3f} (always '{base['class']}')"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    fractions = (1.0 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction)
    data = resolve_data(
        args.path,
        seed=args.seed,
        fractions=fractions,
        strict=args.strict,
        threshold=args.near_threshold,
        positive_class=args.positive_class,
        warn=warn,
    )
    if args.write_split:
        atomic_write_text(args.write_split, data.split_csv())
    if args.json:
        json.dump(data.summary(), sys.stdout, indent=2)
        print()
    else:
        print(format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
