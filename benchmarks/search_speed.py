"""The same resnet_stage2 search with and without the feature cache, in one run: speed and accuracy side by side.

    python -m benchmarks.search_speed                       # on the built-in phantom set (random-init weights)
    python -m benchmarks.search_speed --data ../shared/data/brain_mri --weights ../shared/weights/resnet50_imagenet.pth

Each variant runs ``python -m tuning.search`` in a subprocess with its own local Ray and identical settings
(space, seeds, samples, ASHA), so the only difference is ``--no-cache``. Peak memory is the largest resident
set of the whole process tree (driver and Ray workers) sampled every 0.2 s from /proc. Then the unfrozen part alone
(layer4 + head, depth 1) trains in a tight loop on random cut activations: the limit a cached trial can reach.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--loop-steps", type=int, default=20, help="steps of the tight loop (default: 20)")
    p.add_argument("--keep", default=None, help="keep both run folders here (default: a temporary folder)")
    return p


def run_variant(args, out: Path, cached: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tuning.search",
        "--space",
        "resnet_stage2",
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
        "--no-dashboard",
        "--out",
        str(out),
    ]
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
    peak = 0
    log = []
    import threading

    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
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


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants (Ray's raylet and workers descend from the driver),
    read from /proc (Linux)."""
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
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total


def tight_loop(args) -> float:
    """Images/s of training layer4 + head alone on random layer3 outputs (batch 16): the cached trial's limit."""
    import torch

    from modules.feature_cache import CachedTail, cut_shape
    from modules.networks import ResNet50Classifier

    torch.set_num_threads(max(1, int(args.cpus_per_trial)))
    device = "cuda" if args.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    net = ResNet50Classifier(num_classes=2)
    tail = CachedTail(net, 1).to(device).to(memory_format=torch.channels_last)
    params = [*net.backbone.layer4.parameters(), *net.head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(16, *cut_shape(1, args.image_size), device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 2, (16,), device=device)
    tail.train()
    for step in range(args.loop_steps + 3):
        if step == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tail(x), y).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return 16 * args.loop_steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    print(
        "command: python -m benchmarks.search_speed " + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="search-speed-"))
    results = {}
    for name, cached in (("no-cache", False), ("cache", True)):
        out = base / name
        if out.exists():
            raise SystemExit(f"{out} exists; choose another --keep folder")
        print(f"running the {name} search ...", flush=True)
        results[name] = run_variant(args, out, cached)
    limit = tight_loop(args)
    keys = list(results["cache"])
    width = max(len(k) for k in keys)
    print(f"\n{'':<{width}}  {'no-cache':>10}  {'cache':>10}  {'ratio':>7}")
    for k in keys:
        a, b = results["no-cache"][k], results["cache"][k]
        ratio = f"{a / b:.2f}" if isinstance(a, int | float) and b and k.endswith(" s") else ""
        print(f"{k:<{width}}  {a:>10}  {b:>10}  {ratio:>7}")
    print(
        f"\ntight loop, layer4 + head on stored layer3 outputs: {limit:.1f} img/s; the cached trials' median "
        f"{results['cache']['trial img/s']} img/s counts validation and start-up too "
        f"({100 * results['cache']['trial img/s'] / limit:.0f}% of the loop)"
    )
    speedup = results["no-cache"]["search wall s"] / results["cache"]["search wall s"]
    delta = results["cache"]["refit test acc %"] - results["no-cache"]["refit test acc %"]
    print(
        f"median trial speed-up {results['no-cache']['median trial s'] / results['cache']['median trial s']:.2f}x"
    )
    print(f"search_speedup={speedup:.2f} test_accuracy_delta={delta:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
