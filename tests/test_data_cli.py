import csv
import json

import pytest

from modules.dataset import prepare_data
from tuning import data as data_cli
from tuning.cli import run_main


def test_json_summary_keys(small_set, capsys):
    assert data_cli.main([str(small_set), "--json", "--seed", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "files",
        "classes",
        "skipped",
        "exact_duplicate_groups",
        "duplicate_clusters",
        "groups_across_splits",
        "split",
        "majority_baseline",
    ):
        assert key in out
    assert out["files"] == 16 and out["classes"] == {"no": 8, "yes": 8}
    assert out["groups_across_splits"] == 0
    assert sum(sum(v.values()) for v in out["split"].values()) == 16


def test_readable_report_and_split_csv(small_set, tmp_path, capsys):
    target = tmp_path / "out" / "split.csv"
    assert data_cli.main([str(small_set), "--write-split", str(target)]) == 0
    text = capsys.readouterr().out
    assert "majority baseline" in text and "groups across splits: 0" in text
    rows = list(csv.DictReader(target.open()))
    assert [*rows[0]] == ["path", "sha256", "label", "group", "subject", "split"]
    assert len(rows) == 16


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert run_main(data_cli.main, [str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no such file" in err[0]


def test_too_few_images_for_three_splits(tmp_path):
    from tests.helpers import scan, write_image

    write_image(tmp_path / "s" / "yes" / "a.png", scan(1))
    write_image(tmp_path / "s" / "no" / "b.png", scan(2))
    with pytest.raises(ValueError, match="too few distinct images"):
        prepare_data(tmp_path / "s")
