"""--must-link: sets of images that no rule groups, kept on one side of every split and fold."""

from pathlib import Path

import pytest

from modules.dataset import prepare_data
from modules.sources import DatasetError
from tests.helpers import REPO, real_data_dir
from tuning import data as data_cli
from tuning.cli import run_main


def _links(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "links.csv"
    path.write_text(text)
    return path


def test_linked_images_share_a_group_a_split_and_a_fold(small_set, tmp_path):
    plain = prepare_data(small_set, seed=0)
    paths = [r.path for r in plain.images.records]
    a, b = paths.index("yes/y0.png"), paths.index("no/n3.jpg")
    assert plain.groups[a] != plain.groups[b]  # distinct pictures: no rule joins them
    links = _links(tmp_path, "# a comment\n\nyes/y0.png,no/n3.jpg\n")
    for seed in range(6):
        data = prepare_data(small_set, seed=seed, must_link=links)
        assert data.groups[a] == data.groups[b] and data.splits[a] == data.splits[b]
        for fold in data.cv_folds(2):
            assert fold.splits[a] == fold.splits[b]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yes/y0.png,yes/nope.png\n", r"yes/nope.png \(line 1\) not among the images of the set"),
        ("yes/y0.png\n", "line 1 names 1 path; expected two or more per row"),
    ],
)
def test_a_bad_must_link_file_is_one_clear_error(small_set, tmp_path, capsys, text, message):
    with pytest.raises(DatasetError, match=message):
        prepare_data(small_set, must_link=_links(tmp_path, text))
    assert run_main(data_cli.main, [str(small_set), "--must-link", str(tmp_path / "absent.csv")]) == 2
    assert "no such file; expected a CSV of image paths" in capsys.readouterr().err


@pytest.mark.realdata
def test_the_eyeballed_pairs_of_the_real_set_never_straddle_a_fold():
    """SOURCE.md's pairs that look the same by eye: Y113 and Y59 fall in different groups without the list."""
    root = real_data_dir()
    if root is None:
        pytest.skip("real data absent: set MRI_DATA to a folder with yes/ and no/")
    links = REPO / "data" / "brain_mri_must_link.csv"
    plain = prepare_data(root, seed=0)
    paths = [r.path for r in plain.images.records]
    pairs = [[paths.index(p) for p in line.split(",")] for line in links.read_text().split("\n")[3:] if line]
    assert plain.groups[pairs[1][0]] != plain.groups[pairs[1][1]]  # yes/Y113.JPG, yes/Y59.JPG
    for seed in (0, 1, 10):
        data = prepare_data(root, seed=seed, must_link=links)
        for i, j in pairs:
            assert data.groups[i] == data.groups[j]
            assert all(fold.splits[i] == fold.splits[j] for fold in data.cv_folds(5))
