"""report.html: self-contained (plots embedded, nothing fetched), the numbers beside their baseline, the split,
the provenance; and it renders with its images in a real headless browser."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tuning.html_report import run_markdown, write_html_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory) -> Path:
    """report.html of a copy of the tiny training run's folder."""
    folder = tmp_path_factory.mktemp("html") / "run"
    shutil.copytree(tiny_run.run_dir, folder)
    return write_html_report(folder, markdown_text=run_markdown(tiny_run.report))


def test_the_page_embeds_every_plot_and_fetches_nothing(page):
    text = page.read_text()
    sources = re.findall(r"src=['\"]([^'\"]+)['\"]", text)
    plots = sorted(p.name for p in page.parent.glob("*.png"))
    assert plots and len(sources) == len(plots)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"(href|src)=['\"]?(https?:|//)", text) and "<script" not in text


def test_the_page_says_what_ran_on_what_and_the_numbers_beside_the_baseline(page, tiny_run):
    text = page.read_text()
    test = tiny_run.report["metrics"]["test"]
    assert "majority baseline" in text and f"{100 * test['majority_baseline']:.1f}%" in text
    assert f"(n={test['n']})" in text and "ROC AUC" in text
    assert tiny_run.data.images.fingerprint in text and tiny_run.report["versions"]["code"] in text
    counts = Counter(tiny_run.data.splits)
    for split in ("train", "val", "test"):  # the split table's row total for each split
        assert re.search(rf"<td>{split}</td>(<td>\d+</td>)*<td>{counts[split]}</td></tr>", text), split


def test_the_page_renders_with_its_images_in_a_headless_browser(page, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop screen
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            images = tab.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            wide = tab.evaluate("document.documentElement.scrollWidth")
            assert tab.get_by_text("majority baseline").first.is_visible()
            tab.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) == len(list(page.parent.glob("*.png")))
    assert all(complete and width > 0 for complete, width in images), images
    assert wide <= 1366  # nothing wider than the screen
    assert (tmp_path / "report.png").stat().st_size > 10_000
