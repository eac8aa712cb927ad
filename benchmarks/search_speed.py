"""The same search (default: resnet_stage2) with and without the feature cache, in one run: speed and accuracy side
by side.

    python -m benchmarks.search_speed                       # on the built-in phantom set (random-init weights)
    python -m benchmarks.search_speed --data ../shared/data/brain_mri --weights ../shared/weights/resnet50_imagenet.pth

Each variant runs ``python -m tuning.search`` in a subprocess with its own local Ray and identical settings
(space, seeds, samples, ASHA), so the only difference is ``--no-cache``. Peak memory is the largest
proportional set size (PSS) of the whole process tree (driver, raylet, object store, workers) sampled every 2 s
from /proc: a page shared by several processes (the cache in Ray's object store, mapped zero-copy by every
trial) counts once, split among them, where the resident sizes would count it once per process.

Then the compute ratio: every kind of step a trial runs (plain: frozen forward + head, frozen forward + the
unfrozen stages, evaluation forward; cached: head on pooled features, the unfrozen stages on cut activations, their
evaluation) is timed in a tight loop on random inputs, with the trials' threads and precision. Priced on the
epochs the plain search's trials ran (their stage-2 start and unfreeze depth), these rates say what the cache can
give epoch for epoch, for the same training, if trials did nothing but compute: the limit of the cache itself.
A depth-2 trial still trains layer3 and layer4, most of its compute, so that limit depends on the space. The
measured speed-up can differ from it also because ASHA may stop other trials in the two searches (cached trials
draw from stored views, so their validation losses differ): each search priced on its own epochs gives the
compute ratio of the two searches as run.
The same rates show how close each search's trials come to pure compute (the rest is start-up, loaders, metrics).
The last line is ``search_speedup=<ratio> test_accuracy_delta=<points>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--space", default="resnet_stage2", help="search space, built-in or JSON (default: resnet_stage2)"
    )
    p.add_argument("--data", default=None, help="data set (default: the phantom set)")
    p.add_argument("--weights", default="none", help="resnet50 weights (default: none, random init)")
    p.add_argument("--num-samples", type=int, default=8, help="trials per search (default: 8)")
    p.add_argument("--max-epochs", type=int, default=8, help="epochs per trial (default: 8)")
    p.add_argument("--grace-period", type=int, default=4, help="ASHA grace period (default: 4)")
    p.add_argument("--image-size", type=int, default=224, help="input side in px (default: 224)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (default: 0)")
    p.add_argument("--cache-views", type=int, default=4, help="views per training image (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="search seed (default: 0)")
    p.add_argument(
        "--precision",
        default="auto",
        help="trial precision for both searches (auto, 32-true, bf16-mixed; default: auto)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to both searches (e.g. --set crop=none; a sampled entry cannot be set); repeatable",
    )
    p.add_argument("--loop-steps", type=int, default=6, help="timed steps per tight loop (default: 6)")
    p.add_argument(
        "--phantom",
        action="store_true",
        help="the phantom at small sizes, the search-speed target's settings: --image-size 64 --num-samples 32 "
        "--max-epochs 10 --grace-period 10 on the phantom set with random weights, and only the cached search "
        "(the target is its wall time); flags given explicitly still win",
    )
    p.add_argument(
        "--only-cache",
        action="store_true",
        help="run the cached search alone (no plain search to compare with): its wall time, and how close its "
        "trials come to the tight-loop rates",
    )
    p.add_argument("--keep", default=None, help="keep both run folders here (default: a temporary folder)")
    return p


def run_variant(args, out: Path, cached: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tuning.search",
        "--space",
        args.space,
        "--weights",
        args.weights,
        "--num-samples",
        str(args.num_samples),
        "--max-epochs",
        str(args.max_epochs),
        "--grace-period",
        str(args.grace_period),
        "--image-size",
        str(args.image_size),
        "--cpus-per-trial",
        str(args.cpus_per_trial),
        "--gpus-per-trial",
        str(args.gpus_per_trial),
        "--seed",
        str(args.seed),
        "--cache-views",
        str(args.cache_views),
        "--precision",
        args.precision,
        "--no-dashboard",
        "--out",
        str(out),
    ]
    for item in args.set:
        cmd += ["--set", item]
    if args.data:
        cmd += ["--data", args.data]
    if not cached:
        cmd.append("--no-cache")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak, next_sample = 0, 0.0
    log = []
    import threading

    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        if time.perf_counter() >= next_sample:  # reading smaps costs ~10 ms per large process: not too often
            peak = max(peak, _tree_pss(proc.pid))
            next_sample = time.perf_counter() + 2.0
        time.sleep(0.2)
    wall = time.perf_counter() - started
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise SystemExit(f"search failed ({shlex.join(cmd)}):\n" + "".join(log[-40:]))
    report = json.loads((out / "report.json").read_text())
    s = report["search"]
    return {
        "search wall s": s["wall_time_s"],
        "median trial s": s["trial_time_s_median"],
        "trials per hour": s["trials_per_hour"],
        "time to report s": round(wall, 1),
        "peak memory GB": round(peak / 1e9, 2),
        "best val loss": round(report["best_trial"]["best_value"], 4),
        "refit test acc %": round(100 * report["metrics"]["test"]["accuracy"], 1),
        "trial img/s": s["trial_images_per_s_median"],
        "cache MB": s["cache"].get("megabytes", 0),
    }


def _tree_pss(root_pid: int) -> int:
    """Proportional set size in bytes of a process and all its descendants (Ray's raylet and workers descend
    from the driver), read from /proc/<pid>/smaps_rollup (Linux; resident size where that file is missing)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in tree:
        with contextlib.suppress(OSError, IndexError, ValueError):
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except FileNotFoundError:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                continue
            total += next(
                int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")
            )
    return total


def trial_precision(args) -> str:
    """The precision the trials ran with: ``--precision auto`` resolved as a trial resolves it (a trial without
    a GPU sees none)."""
    import torch

    from tuning.config import TrainConfig
    from tuning.engine import resolve_precision

    on_gpu = args.gpus_per_trial > 0 and torch.cuda.is_available()
    return resolve_precision(TrainConfig(precision=args.precision), cuda=on_gpu)


def step_rates(args, blocks: list[int], *, batch: int = 16) -> dict[str, float]:
    """Images/s of every kind of step a trial runs, in a tight loop on random inputs (batch 16, the trials'
    threads and precision): the real training step, staged as the trials stage it, from
    ``benchmarks.train_throughput``.

    Keys: ``plain/stage1``, ``plain/stage2/<k>``, ``plain/eval`` (whole network from images); ``cached/stage1``,
    ``cached/eval1`` (head on pooled features), ``cached/stage2/<k>``, ``cached/eval/<k>`` (the k trainable
    blocks above the cut: 3 for unfreeze depth 1, 9 for depth 2)."""
    import torch

    from benchmarks.train_throughput import autocast_for, build_row, time_row
    from modules.feature_cache import POOLED, cut_shape

    torch.set_num_threads(max(1, int(args.cpus_per_trial)))
    device = torch.device("cuda" if args.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
    autocast = autocast_for("bf16" if trial_precision(args) == "bf16-mixed" else "fp32", device)

    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")  # the step logs, with no Trainer to log to

    def rate(row: str, shape: tuple[int, ...], *, cached: bool = False, train: bool = True) -> float:
        module, optimizer = build_row(row, device, cached=cached)
        x = torch.randn(batch, *shape, device=device)
        labels = torch.arange(batch, device=device) % 2
        seconds = time_row(
            module, optimizer, (x, labels), steps=args.loop_steps, warmup=2, autocast=autocast, train=train
        )
        return batch * args.loop_steps / seconds

    images = (3, args.image_size, args.image_size)
    rates = {
        "plain/stage1": rate("stage1", images),
        "plain/eval": rate("stage1", images, train=False),
        "cached/stage1": rate("stage1", (POOLED,), cached=True),
        "cached/eval1": rate("stage1", (POOLED,), cached=True, train=False),
    }
    for k in blocks:
        cut = cut_shape(k, args.image_size)
        rates[f"plain/stage2/{k}"] = rate(f"stage2-b{k}", images)
        rates[f"cached/stage2/{k}"] = rate(f"stage2-b{k}", cut, cached=True)
        rates[f"cached/eval/{k}"] = rate(f"stage2-b{k}", cut, cached=True, train=False)
    return rates


def trial_epochs(run_dir: Path) -> list[dict]:
    """Per trial of a finished search: epochs run, stage-2 start, the bottleneck blocks its stage 2 trains
    (``unfreeze_blocks``, or those of its ``unfreeze_depth``), seconds it took (from its trials.csv, where a
    space's constants are columns too; a space that names none of them runs ``TrainConfig``'s defaults)."""
    import csv

    from modules.networks import depth_blocks
    from tuning.config import TrainConfig

    with (run_dir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "epochs": int(r["iterations"]),
            "stage2_epoch": int(float(r.get("stage2_epoch") or TrainConfig.stage2_epoch)),
            "blocks": int(float(r.get("unfreeze_blocks") or TrainConfig.unfreeze_blocks))
            or depth_blocks(int(float(r.get("unfreeze_depth") or TrainConfig.unfreeze_depth))),
            "time_s": float(r.get("time_s") or 0.0),
        }
        for r in rows
        if r["iterations"]
    ]


def compute_seconds(trials: list[dict], rates: dict, *, n_train: int, n_val: int, cached: bool) -> float:
    """Seconds of pure compute the trials' epochs take at the measured rates (one trial at a time)."""
    kind = "cached" if cached else "plain"
    total = 0.0
    for t in trials:
        stage1 = min(t["epochs"], t["stage2_epoch"])
        stage2 = t["epochs"] - stage1
        d = t["blocks"]
        evaluate = rates["cached/eval1"] if cached else rates["plain/eval"]
        total += stage1 * (n_train / rates[f"{kind}/stage1"] + n_val / evaluate)
        if stage2:
            evaluate = rates[f"cached/eval/{d}"] if cached else rates["plain/eval"]
            total += stage2 * (n_train / rates[f"{kind}/stage2/{d}"] + n_val / evaluate)
    return total


def split_counts(run_dir: Path) -> dict[str, int]:
    import csv

    with (run_dir / "split.csv").open() as f:
        splits = [r["split"] for r in csv.DictReader(f)]
    return {k: splits.count(k) for k in ("train", "val", "test")}


PHANTOM = {"image_size": 64, "num_samples": 32, "max_epochs": 10, "grace_period": 10}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags; with ``--phantom``, its settings are the defaults (flags given explicitly still win)."""
    parser = get_args_parser()
    if parser.parse_args(argv).phantom:
        parser.set_defaults(**PHANTOM, only_cache=True, data=None, weights="none")
    return parser.parse_args(argv)


def only_cache(args, base: Path) -> int:
    """The cached search alone: its row of the table, and its trials against the tight-loop rates."""
    out = base / "cache"
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --keep folder")
    print("running the cached search ...", flush=True)
    result = run_variant(args, out, True)
    trials = trial_epochs(out)
    blocks = sorted({t["blocks"] for t in trials if t["epochs"] > t["stage2_epoch"]})
    rates = step_rates(args, blocks)
    counts = split_counts(out)
    compute = compute_seconds(trials, rates, n_train=counts["train"], n_val=counts["val"], cached=True)
    spent = sum(t["time_s"] for t in trials)
    width = max(len(k) for k in result)
    print()
    for k, v in result.items():
        print(f"{k:<{width}}  {v:>10}")
    share = f"{100 * compute / spent:.0f}%" if spent > 0 else "n/a"
    print(
        f"cached trials: {spent:.0f} s in all, {compute:.0f} s of it compute at the tight-loop rates ({share})"
    )
    print(f"search_wall_s={result['search wall s']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(
        "command: python -m benchmarks.search_speed " + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="search-speed-"))
    if args.only_cache:
        return only_cache(args, base)
    results = {}
    for name, cached in (("no-cache", False), ("cache", True)):
        out = base / name
        if out.exists():
            raise SystemExit(f"{out} exists; choose another --keep folder")
        print(f"running the {name} search ...", flush=True)
        results[name] = run_variant(args, out, cached)
    ran = {name: trial_epochs(base / name) for name in results}
    blocks = sorted({t["blocks"] for r in ran.values() for t in r if t["epochs"] > t["stage2_epoch"]})
    rates = step_rates(args, blocks)
    counts = split_counts(base / "no-cache")

    def priced(trials: list[dict], cached: bool) -> float:
        return compute_seconds(trials, rates, n_train=counts["train"], n_val=counts["val"], cached=cached)

    plain_s, cached_s = priced(ran["no-cache"], False), priced(ran["no-cache"], True)
    as_run = plain_s / priced(ran["cache"], True)
    keys = list(results["cache"])
    width = max(len(k) for k in keys)
    print(f"\n{'':<{width}}  {'no-cache':>10}  {'cache':>10}  {'ratio':>7}")
    for k in keys:
        a, b = results["no-cache"][k], results["cache"][k]
        ratio = f"{a / b:.2f}" if isinstance(a, int | float) and b and k.endswith(" s") else ""
        print(f"{k:<{width}}  {a:>10}  {b:>10}  {ratio:>7}")
    threads = max(1, int(args.cpus_per_trial))
    print(
        f"\ntight loops, batch 16, {threads} thread(s) per trial, {trial_precision(args)} (images/s; "
        "cached stage 1 = head on pooled features, cached stage 2 = the unfrozen stages on cut activations):"
    )
    for k, v in rates.items():
        print(f"  {k:<18} {v:>9.1f}")
    print(
        f"compute, epoch for epoch (the plain search's {len(ran['no-cache'])} trials as they ran, {counts['train']} "
        f"train / {counts['val']} val images): plain {plain_s:.0f} s, cached {cached_s:.0f} s -> the cache alone "
        f"gives at most {plain_s / cached_s:.2f}x for the same training; with each search's own epochs (ASHA's "
        f"stops) the compute ratio is {as_run:.2f}x"
    )
    for name, trials in ran.items():  # how close the trials come to the tight loops: the rest is overhead
        spent = sum(t["time_s"] for t in trials)
        compute = priced(trials, name == "cache")
        share = f"{100 * compute / spent:.0f}%" if spent > 0 else "n/a"
        print(
            f"{name} trials: {spent:.0f} s in all, {compute:.0f} s of it compute at the tight-loop rates ({share})"
        )
    speedup = results["no-cache"]["search wall s"] / results["cache"]["search wall s"]
    delta = results["cache"]["refit test acc %"] - results["no-cache"]["refit test acc %"]
    print(
        f"median trial speed-up {results['no-cache']['median trial s'] / results['cache']['median trial s']:.2f}x; "
        f"time to report (cache build and refit included) {results['no-cache']['time to report s'] / results['cache']['time to report s']:.2f}x"
    )
    print(f"search_speedup={speedup:.2f} test_accuracy_delta={delta:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
