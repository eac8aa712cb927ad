"""report.html: one self-contained page per run folder (train, search, cross-validation, repeats, evaluate), to
open in a browser or send to a colleague.

The page is the folder's report.md (Python-Markdown, tables extension) with its plots embedded as data URIs,
then what a reader checks before trusting a number: the split counts (from split.csv), any plot the text does
not show, the data fingerprint, the command, and the library versions and code revision. Nothing is fetched
from anywhere: no scripts, fonts or style sheets outside the file.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from collections import Counter
from pathlib import Path

import markdown

from modules.files import atomic_write_text
from tuning.formatting import metrics_markdown

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; line-height: 1.45; color: #1d1d1f; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #ccd; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #dde; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f0f1f5; }
tr:nth-child(even) td { background: #fafafc; }
code { background: #f3f3f6; padding: 0 .2rem; border-radius: 3px; font-size: .85rem; word-break: break-all; }
img { max-width: 100%; height: auto; border: 1px solid #e5e5ea; margin: .4rem .4rem .4rem 0; }
figure { display: inline-block; margin: 0 1rem 1rem 0; max-width: 48%; vertical-align: top; }
figcaption { font-size: .8rem; color: #555; }
.note { color: #555; font-size: .85rem; }
"""


def run_markdown(report: dict) -> str:
    """report.md of a training run (``tuning.train``) or an evaluation (``tuning.evaluate``): what ran on what,
    the metrics with their intervals beside the majority baseline, the plots."""
    kind = report.get("kind", "run")
    m = (report.get("metrics") or {}).get("test")
    data = report.get("data") or {}
    title = "Evaluation report" if kind == "evaluate" else "Training report"
    lines = [f"# {title}", "", f"Command: `{report.get('command') or 'not recorded'}`", ""]
    synthetic = " **(synthetic phantom set, not real scans)**" if data.get("synthetic") else ""
    lines += [f"Data: `{data.get('source', 'unknown')}`{synthetic}.", ""]
    model = report.get("model") or {}
    if kind == "evaluate" and model:
        lines += [f"Model: {model.get('model')} from `{model.get('checkpoint')}`.", ""]
    elif report.get("config"):
        lines += [
            f"Model: {report['config'].get('model')}, weights {report.get('weights')}, best epoch "
            f"{report.get('best_epoch')} of {report.get('epochs_trained')} (trained on {report.get('trained_on')}).",
            "",
        ]
    if m is None:
        lines += [
            "No test split: a final fit on every image; score model.pt with `python -m tuning.evaluate`.",
            "",
        ]
    else:
        lines += [
            "## Result",
            "",
            *metrics_markdown(m),
            "",
        ]
    plots = (report.get("artifacts") or {}).get("plots") or []
    if plots:
        lines += ["Plots: " + ", ".join(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _embed_images(body: str, run_dir: Path) -> tuple[str, set[str]]:
    """``body`` with every ``<img src="NAME.png">`` of a file in ``run_dir`` replaced by its data URI, and
    the names embedded."""
    shown: set[str] = set()

    def swap(match: re.Match) -> str:
        name = html.unescape(match.group(1))
        path = run_dir / name
        if path.suffix.lower() != ".png" or not path.is_file() or path.resolve().parent != run_dir.resolve():
            return match.group(0)
        shown.add(name)
        return f'src="{_data_uri(path)}"'

    return re.sub(r'src="([^"]+)"', swap, body), shown


def _split_table(run_dir: Path) -> str:
    """Counts per split (or cross-validation fold) and class, from split.csv; empty without one."""
    path = run_dir / "split.csv"
    if not path.is_file():
        return ""
    rows = list(csv.DictReader(path.open(newline="")))
    column = "split" if rows and "split" in rows[0] else "fold" if rows and "fold" in rows[0] else None
    if column is None:
        return ""
    counts = Counter((r[column], r.get("label", "")) for r in rows)
    parts = sorted({p for p, _ in counts}, key=lambda p: (p not in ("train", "val", "test"), p))
    labels = sorted({c for _, c in counts})
    groups = len({r.get("group") for r in rows}) if "group" in rows[0] else None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in labels)
    body = "".join(
        f"<tr><td>{html.escape(p)}</td>"
        + "".join(f"<td>{counts[(p, c)]}</td>" for c in labels)
        + f"<td>{sum(counts[(p, c)] for c in labels)}</td></tr>"
        for p in parts
    )
    note = f" in {groups} groups (duplicate clusters and linked images kept together)" if groups else ""
    return (
        f"<h2>Split</h2><p class='note'>{len(rows)} images{note}; one row per {column} (split.csv).</p>"
        f"<table><tr><th>{column}</th>{head}<th>all</th></tr>{body}</table>"
    )


def _provenance(report: dict) -> str:
    data = report.get("data") or {}
    versions = report.get("versions") or {}
    rows = [("data fingerprint", data.get("fingerprint")), ("command", report.get("command"))]
    rows += [(k, v) for k, v in sorted(versions.items())]
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}</code></td></tr>"
        for k, v in rows
        if v is not None
    )
    return f"<h2>Provenance</h2><table>{cells}</table>"


def write_html_report(run_dir: str | Path, *, markdown_text: str | None = None) -> Path:
    """Write ``run_dir/report.html`` from its report.md (or ``markdown_text``), report.json, split.csv and plots;
    returns its path."""
    run_dir = Path(run_dir)
    text = markdown_text if markdown_text is not None else (run_dir / "report.md").read_text()
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    body, shown = _embed_images(markdown.markdown(text, extensions=["tables"]), run_dir)
    extra = [p for p in sorted(run_dir.glob("*.png")) if p.name not in shown]
    figures = "".join(
        f"<figure><img src='{_data_uri(p)}' alt='{html.escape(p.name)}'><figcaption>{html.escape(p.name)}"
        "</figcaption></figure>"
        for p in extra
    )
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "Run report")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}{_split_table(run_dir)}"
        + (f"<h2>More plots</h2>{figures}" if figures else "")
        + f"{_provenance(report)}</body></html>\n"
    )
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
