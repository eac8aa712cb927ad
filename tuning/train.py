"""``python -m tuning.train``: one training run without Ray (debugging, and what a search's refit runs).

Trains on the train split, picks the epoch with the best validation metric, evaluates that checkpoint once on
the test split, and writes into ``--out``: ``metrics.csv``, ``model.pt`` (self-describing best checkpoint),
``split.csv``, ``loss_curves.png``, ``confusion_matrix.png``, ``roc.png`` (one-vs-rest curves for more than two
classes) and ``report.json``. The classes are the data's class folders; a two-class set scores its
``--positive-class`` (default ``yes``) for sensitivity, specificity and the ROC.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from modules.files import atomic_write_text
from tuning.cli import output_folder, run_main, warn
from tuning.config import TrainConfig
from tuning.data_options import DataOptions
from tuning.flags import add_flags, values_of
from tuning.formatting import summary_lines
from tuning.html_report import run_markdown, write_html_report
from tuning.training import run_training


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict = {}
    add_flags(p, DataOptions, groups=groups)
    o = groups["output"] = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="run folder to write (refused if it holds a report already)")
    o.add_argument("--overwrite", action="store_true", help="allow writing into a folder with a report")
    o.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
    add_flags(p, TrainConfig, groups=groups)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = TrainConfig.from_dict(values_of(args, TrainConfig))
    opts = DataOptions(**values_of(args, DataOptions))
    out = output_folder(args.out, "train", marker="report.json", overwrite=args.overwrite)
    data = opts.prepared(warn=warn)
    command = "python -m tuning.train " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = run_training(cfg, data, out, command=command, progress=not args.no_progress)
    atomic_write_text(Path(out) / "report.md", run_markdown(report))
    write_html_report(out)
    print(
        f"\n{cfg.model}: best epoch {report['best_epoch'] + 1} of {report['epochs_trained']}"
        f" by {cfg.monitor}; data: {report['data']['source']}"
        + (" (SYNTHETIC)" if report["data"]["synthetic"] else "")
    )
    print("\n".join(summary_lines(report["metrics"]["test"])))
    print(
        f"written: {out}/report.html (open it in a browser), report.json, report.md, model.pt, metrics.csv, "
        "loss_curves.png, confusion_matrix.png, roc.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
