"""Does Optuna's TPE find a better validation loss than random search for the same trial budget?

    python -m benchmarks.tpe_vs_random                       # on the built-in phantom set (random-init weights)
    python -m benchmarks.tpe_vs_random --data ../shared/data/brain_mri --weights ../shared/weights/resnet50_imagenet.pth --must-link data/brain_mri_must_link.csv

For every search seed, the same search (space, split, budget, ASHA, precision, one trial at a time) runs twice
with ``python -m tuning.search``, once with ``--search-alg random`` and once with ``--search-alg tpe``, each in a
subprocess with its own local Ray. The number compared is what the search optimises: the best validation loss
any trial reached (at its best epoch; ASHA stops weak trials either way). The refit's test accuracy is shown
beside it, for context only: the test split chooses nothing. One trial at a time (``--max-concurrent 1``, the
default) makes each search's order, and so ASHA's decisions and TPE's model, fixed by its seed.

It prints a markdown table, one row per seed, the mean and SD of the paired differences (TPE minus random; below
zero: TPE found the lower loss), and as its last line ``tpe_minus_random_mean=<value> tpe_wins=<k>/<seeds>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGS = ("random", "tpe")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tpe_vs_random",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", default="resnet_stage2", help="search space (default: resnet_stage2)")
    p.add_argument("--data", default=None, help="data set (default: the phantom set)")
    p.add_argument("--weights", default="none", help="resnet50 weights (default: none, random init)")
    p.add_argument("--must-link", default=None, help="the data set's must-link file (default: none)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default: 0 1 2)")
    p.add_argument(
        "--split-seed", type=int, default=0, help="the one grouped split of every search (default: 0)"
    )
    p.add_argument("--num-samples", type=int, default=20, help="trials per search: the budget (default: 20)")
    p.add_argument("--tpe-startup", type=int, default=6, help="TPE's random start-up trials (default: 6)")
    p.add_argument("--max-epochs", type=int, default=6, help="epochs per trial, ASHA's max_t (default: 6)")
    p.add_argument("--grace-period", type=int, default=4, help="ASHA's first rung, epochs (default: 4)")
    p.add_argument("--image-size", type=int, default=224, help="input side in px (default: 224)")
    p.add_argument("--precision", default="bf16-mixed", help="trial precision, pinned (default: bf16-mixed)")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default: 1)")
    p.add_argument("--cpus-per-trial", type=float, default=2, help="CPUs per trial (default: 2)")
    p.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    return p


def search_command(args, alg: str, seed: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tuning.search", "--space", args.space, "--weights", args.weights,
           "--search-alg", alg, "--tpe-startup", str(args.tpe_startup), "--seed", str(seed),
           "--split-seed", str(args.split_seed), "--num-samples", str(args.num_samples),
           "--max-epochs", str(args.max_epochs), "--grace-period", str(args.grace_period),
           "--image-size", str(args.image_size), "--precision", args.precision,
           "--max-concurrent", str(args.max_concurrent), "--cpus-per-trial", str(args.cpus_per_trial),
           "--no-dashboard", "--out", str(out)]  # fmt: skip
    if args.data:
        cmd += ["--data", args.data]
    if args.must_link:
        cmd += ["--must-link", args.must_link]
    return cmd


def run_search(cmd: list[str], out: Path) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"search failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {
        "best_val_loss": report["best_trial"]["best_value"],
        "test_accuracy": report["metrics"]["test"]["accuracy"],
        "stopped_early": report["search"]["trials"]["stopped_early"],
        "seconds": report["search"]["wall_time_s"],
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| seed | random: best val loss | TPE: best val loss | TPE - random | random: test acc | TPE: test acc |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["random"], r["tpe"]
        lines.append(
            f"| {r['seed']} | {a['best_val_loss']:.4f} | {b['best_val_loss']:.4f} | "
            f"{b['best_val_loss'] - a['best_val_loss']:+.4f} | {100 * a['test_accuracy']:.1f}% | "
            f"{100 * b['test_accuracy']:.1f}% |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tpe-vs-random-"))
    rows = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        for alg in ALGS:
            out = root / f"{alg}-seed{seed}"
            cmd = search_command(args, alg, seed, out)
            print(f"seed {seed}, {alg}: {' '.join(cmd[1:])}", flush=True)
            row[alg] = run_search(cmd, out)
        rows.append(row)
    diffs = [r["tpe"]["best_val_loss"] - r["random"]["best_val_loss"] for r in rows]
    print("\n" + "\n".join(table(rows)))
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    print(f"\nTPE - random, best validation loss: mean {statistics.fmean(diffs):+.4f}, SD {sd:.4f} over "
          f"{len(diffs)} seeds ({args.num_samples} trials each, {args.tpe_startup} of TPE's at random)")  # fmt: skip
    print(f"run folders: {root}")
    print(
        f"tpe_minus_random_mean={statistics.fmean(diffs):+.4f} tpe_wins={sum(d < 0 for d in diffs)}/{len(diffs)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
