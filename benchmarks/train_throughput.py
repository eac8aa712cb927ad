"""Training throughput (images/s) of the CNN and of ResNet50 in each fine-tuning stage, in fp32 and bf16.

Each row runs the project's real training step (``ClassifierModule.training_step``, backward, optimiser step)
on one batch of random images in a tight loop: no Trainer, no data loading, so it measures the model alone.
ResNet50 is frozen and unfrozen with the same helpers as ``StagedFineTuning`` (stage 1: head only; stage 2
depth d: head + the last d stages, batch-norm statistics frozen). Run from the repository root:

    python -m benchmarks.train_throughput --image-size 128 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
import warnings

import torch

from modules.cached_training import CachedTail
from modules.finetune import add_param_group, frozen_bn_modules, set_trainable, unfreeze_stages
from modules.lit_module import ClassifierModule
from modules.networks import build_network, depth_blocks

ROWS = ("cnn", "stage1", "stage2-d1", "stage2-d2", "stage2-d3", "stage2-d4")
DTYPES = ("fp32", "bf16")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument(
        "--image-size", type=int, default=224, help="square input side in pixels (default 224)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows (default all: {','.join(ROWS)})"
    )
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated fp32,bf16 (default both)")
    return parser


def _row_blocks(row: str) -> int:
    """The bottleneck blocks a row's stage 2 trains: ``stage2-d<d>`` the last d stages' blocks,
    ``stage2-b<k>`` the last k blocks; 0 for a row without stage 2."""
    if row.startswith("stage2-d"):
        return depth_blocks(int(row[len("stage2-d") :]))
    if row.startswith("stage2-b"):
        return int(row[len("stage2-b") :])
    return 0


def build_row(
    row: str, device: torch.device, *, cached: bool = False
) -> tuple[ClassifierModule, torch.optim.Optimizer]:
    """The module in training mode and its optimiser, staged as ``StagedFineTuning`` would stage it.
    ``cached``: the ResNet50 wrapped in ``CachedTail`` as a cached trial trains it (input: pooled features in
    stage 1, the cut activations below its trainable blocks in stage 2). Rows: ``cnn``, ``stage1``,
    ``stage2-d<depth>`` and ``stage2-b<blocks>`` (the last k bottleneck blocks)."""
    if row == "cnn":
        module = ClassifierModule(network=build_network("cnn"), channels_last=True).to(device).train()
        return module, module.configure_optimizers()
    network = build_network("resnet50", weights="none", dropout=0.3)
    blocks = _row_blocks(row)
    model = CachedTail(network, blocks or depth_blocks(1)) if cached else network
    module = ClassifierModule(network=model, lr=1e-3, channels_last=True).to(device).train()
    set_trainable([network.backbone], False)
    optimizer = module.configure_optimizers()  # head only, as in stage 1
    if blocks:
        add_param_group(optimizer, unfreeze_stages(network, 1, blocks=blocks), lr=1e-4)
    for bn in frozen_bn_modules(network, freeze_bn_stats=True):
        bn.eval()
    return module, optimizer


def time_row(module, optimizer, batch, *, steps: int, warmup: int, autocast, train: bool = True) -> float:
    """Seconds for ``steps`` training steps after ``warmup`` untimed ones (``train=False``: evaluation forward
    passes in inference mode instead)."""
    device = batch[0].device
    if not train:
        module.eval()  # (training rows keep build_row's modes: frozen batch norms stay in eval)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if not train:
            with torch.inference_mode(), autocast():
                module(batch[0])
            continue
        with autocast():
            loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def autocast_for(dtype: str, device: torch.device):
    if dtype == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def run(args: argparse.Namespace) -> list[dict]:
    """One result dict per (row, dtype): row, dtype, trainable (parameters), ms_per_step, images_per_s."""
    device = torch.device(args.device)
    results = []
    for row in args.rows.split(","):
        module, optimizer = build_row(row, device)
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        batch = (images, torch.arange(args.batch_size, device=device) % 2)
        for dtype in args.dtypes.split(","):
            seconds = time_row(
                module,
                optimizer,
                batch,
                steps=args.steps,
                warmup=args.warmup,
                autocast=autocast_for(dtype, device),
            )
            results.append(
                {
                    "row": row,
                    "dtype": dtype,
                    "trainable": trainable,
                    "ms_per_step": 1000 * seconds / args.steps,
                    "images_per_s": args.steps * args.batch_size / seconds,
                }
            )
            print(_format(results[-1]), flush=True)
        del module, optimizer
    return results


def _format(r: dict) -> str:
    return (
        f"{r['row']:<10} {r['dtype']:<5} {r['trainable']:>12,} {r['ms_per_step']:>10.1f} "
        f"{r['images_per_s']:>9.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for flag, given, valid in (("--rows", args.rows, ROWS), ("--dtypes", args.dtypes, DTYPES)):
        unknown = sorted(set(given.split(",")) - set(valid))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; valid: {', '.join(valid)}")
    if min(args.steps, args.batch_size) < 1 or args.warmup < 0 or args.image_size < 32:
        parser.error("need --steps >= 1, --batch-size >= 1, --warmup >= 0 and --image-size >= 32")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # training_step logs through self.log, which only warns without a Trainer
    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
    print(
        "command: python -m benchmarks.train_throughput " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__}, {name}; batch {args.batch_size}, {args.image_size}x{args.image_size} px, "
        f"channels_last, {args.warmup} warm-up + {args.steps} timed steps per row"
    )
    print(f"{'row':<10} {'dtype':<5} {'trainable':>12} {'ms/step':>10} {'images/s':>9}")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
