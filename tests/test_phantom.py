"""The phantom generator: deterministic, well-formed, and learnable but not by intensity alone."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from modules import phantom
from modules.dataset import prepare_data
from modules.demo_data import DEMO_PHANTOM
from modules.phantom import encode_png, main, make_phantom
from modules.phantom_render import MASS_KINDS, image_rng, mass_kind, render_example, render_slice


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: pathlib.Path, classes: tuple[str, ...] = ("no", "yes")) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            images.append(np.asarray(Image.open(path)))
            labels.append(label)
    return np.stack(images), np.array(labels)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        out = out | np.roll(out, 1, 0) | np.roll(out, -1, 0) | np.roll(out, 1, 1) | np.roll(out, -1, 1)
    return out


# ----------------------------------------------------------------------------------------------- determinism
def test_same_arguments_give_the_same_bytes(tmp_path):
    a = _files(make_phantom(tmp_path / "a", n_per_class=3, size=48, seed=7))
    b = _files(make_phantom(tmp_path / "b", n_per_class=3, size=48, seed=7))
    assert a == b
    c = _files(make_phantom(tmp_path / "c", n_per_class=3, size=48, seed=8))
    assert all(a[name] != c[name] for name in a)


def test_image_i_does_not_depend_on_n_per_class(tmp_path):
    three = _files(make_phantom(tmp_path / "three", n_per_class=3, size=40))
    five = _files(make_phantom(tmp_path / "five", n_per_class=5, size=40))
    assert len(three) == 6 and len(five) == 10
    assert all(five[name] == data for name, data in three.items())


def test_bytes_are_pinned():
    # Golden hashes: a change here means the phantom changed for every user (and every data fingerprint in
    # reports). Update them, and bump phantom.VERSION, only for a deliberate change to the generator; on a new
    # platform a mismatch means float arithmetic leaked into the output: fix that, do not re-pin.
    digests = [
        hashlib.sha256(encode_png(render_example(c, i, size=32)[0])).hexdigest()[:16]
        for c in (0, 1)
        for i in (0, 1)
    ]
    assert digests == ["df74ef607ccc0b2e", "a8b16b4e3a43d374", "0df4918e18d3085b", "c907af214bc1b361"]
    assert phantom.VERSION == 2


# ----------------------------------------------------------------------------------------------- files
def test_layout_counts_and_names(tmp_path):
    root = make_phantom(tmp_path / "set", n_per_class=4, size=32)
    assert root == tmp_path / "set"
    assert sorted(p.name for p in root.iterdir()) == ["no", "yes"]
    for name in ("no", "yes"):
        assert sorted(p.name for p in (root / name).iterdir()) == sorted(f"{name}_{i}.png" for i in range(4))


def test_files_are_grayscale_pngs_of_the_size_asked_for(tmp_path):
    root = make_phantom(tmp_path, n_per_class=2, size=72, seed=3)
    for ci, name in enumerate(("no", "yes")):
        for i in range(2):
            with Image.open(root / name / f"{name}_{i}.png") as im:
                im.load()
                assert (im.format, im.mode, im.size) == ("PNG", "L", (72, 72))
                np.testing.assert_array_equal(np.asarray(im), render_example(ci, i, size=72, seed=3)[0])


def test_png_encoder_round_trips_through_pillow(tmp_path):
    # 300 x 260 is over 65535 raw bytes: the stream needs several stored deflate blocks.
    img = np.random.default_rng(0).integers(0, 256, size=(260, 300), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(img))
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), img)


def test_rerun_into_the_same_folder_is_allowed_but_foreign_files_are_refused(tmp_path):
    make_phantom(tmp_path, n_per_class=2, size=32)
    make_phantom(tmp_path, n_per_class=2, size=32)
    with pytest.raises(ValueError, match="no/no_1.png"):
        make_phantom(tmp_path, n_per_class=1, size=32)  # would leave stale no_1.png, yes_1.png behind
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        make_phantom(tmp_path, n_per_class=2, size=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_per_class": 0}, "n_per_class"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"classes": ("no",)}, "2 to"),
        ({"classes": ("no", "yes", "a", "b", "c", "d")}, "2 to"),
        ({"classes": ("no", "no")}, "distinct"),
        ({"classes": ("no", "../yes")}, "folder name"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(tmp_path / "set", **kwargs)


def test_no_two_phantoms_are_grouped_as_near_copies(tmp_path):
    # The data pipeline groups near copies (thumbnail correlation >= 0.95) and keeps each group in one split;
    # phantom heads must differ enough that the built-in demo set (demo_data.DEMO_PHANTOM) has no such group.
    data = prepare_data(make_phantom(tmp_path, **DEMO_PHANTOM), synthetic=True)
    assert data.dups.clusters == []


# ----------------------------------------------------------------------------------------------- masses
def test_no_mass_gives_no_mask():
    img, mask = render_slice(np.random.default_rng(0), size=64, mass=False)
    assert img.dtype == np.uint8 and img.shape == (64, 64) and mask is None


@pytest.mark.parametrize("size", [32, 64, 128])
def test_yes_masks_have_area_inside_the_head(size):
    for i in range(12):
        img, mask = render_example(1, i, size=size)
        assert mask is not None and mask.dtype == bool and mask.shape == img.shape
        assert 0 < mask.sum() < 0.15 * mask.size
        head_rows, head_cols = np.nonzero(img > 60)  # the bright skull ring bounds the head
        rows, cols = np.nonzero(mask)
        assert head_rows.min() < rows.min() and rows.max() < head_rows.max()
        assert head_cols.min() < cols.min() and cols.max() < head_cols.max()


def test_masses_vary_in_size_and_contrast():
    areas, contrasts = [], []
    for i in range(30):
        img, mask = render_example(1, i, size=128)
        around = _dilate(mask, 4) & ~_dilate(mask, 1)
        areas.append(mask.sum())
        contrasts.append(img[mask].mean() - img[around].mean())
    areas, contrasts = np.array(areas), np.array(contrasts)
    assert areas.max() > 4 * areas.min()
    assert (contrasts > 40).any()  # clearly brighter than the tissue around it
    assert (np.abs(contrasts) < 15).any()  # faint
    assert (contrasts < 0).any()  # darker


@pytest.mark.parametrize("kind", MASS_KINDS)
def test_every_mass_kind_renders_at_every_size(kind):
    for size in (32, 64, 128):
        for i in range(30 if size == 32 else 3):  # 32 px: the smallest heads leave the least room for a mass
            img, mask = render_slice(image_rng(5, 1, i), size=size, mass=True, kind=kind)
            assert img.shape == (size, size) and mask is not None and mask.any()


def test_three_classes(tmp_path):
    classes = ("healthy", "bright", "ring")
    root = make_phantom(tmp_path, n_per_class=3, size=48, classes=classes)
    images, labels = _load(root, classes)
    assert images.shape == (9, 48, 48) and np.bincount(labels).tolist() == [3, 3, 3]
    assert [mass_kind(k) for k in range(3)] == [None, MASS_KINDS[0], MASS_KINDS[1]]
    for k in (1, 2):
        assert all(render_example(k, i, size=48)[1].any() for i in range(3))


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_writes_and_reports(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--n-per-class", "2", "--size", "32", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 synthetic phantom PNGs" in out and "32x32" in out and "seed 4" in out
    assert len(_files(tmp_path / "out")) == 4


def test_cli_rejects_bad_input_and_documents_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--size", "8"])
    assert exit_info.value.code == 2 and "size" in capsys.readouterr().err
    flags = [a for a in phantom.get_args_parser()._actions if a.option_strings and a.dest != "help"]
    assert flags and all("default" in a.help for a in flags)


# ----------------------------------------------------------------------------------------------- learnability
def _best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single threshold on `values`, either way round, chosen on these very images."""
    return max(max(a, 1.0 - a) for a in (float(((values >= t) == labels).mean()) for t in np.unique(values)))


def test_intensity_statistics_alone_do_not_separate_the_classes(tmp_path):
    images, labels = _load(make_phantom(tmp_path, n_per_class=40, size=64))
    flat = images.reshape(len(images), -1).astype(np.float64)
    stats = {
        "max": flat.max(1),
        "mean": flat.mean(1),
        "std": flat.std(1),
        "p99": np.percentile(flat, 99, axis=1),
    }
    for name, values in stats.items():
        best = _best_threshold_accuracy(values, labels)
        assert best < 0.95, f"a threshold on the {name} intensity separates the classes ({best:.2f})"


def _tiny_cnn(torch):
    nn = torch.nn

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    # Global max pooling: a mass is a local finding, wherever it lies.
    return nn.Sequential(
        *block(1, 12), *block(12, 24), *block(24, 48), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(48, 2)
    )


def _dihedral(torch, x, view: int):
    """View 0..7 of a (N, C, H, W) batch: a quarter-turn count and an optional flip; a mass stays a mass."""
    return torch.rot90(x.flip(3) if view >= 4 else x, view % 4, (2, 3))


def _accuracy(torch, net, x, y, *, views: int = 1) -> float:
    """Accuracy of the class probabilities averaged over the first `views` dihedral views."""
    net.eval()
    with torch.no_grad():
        prob = sum(net(_dihedral(torch, x, v)).softmax(1) for v in range(views))
    return float((prob.argmax(1) == y).float().mean())


def _train_tiny_cnn(torch, train_x, train_y, val_x, val_y, *, epochs: int) -> tuple[float, float]:
    """Validation accuracy after the first epoch and after the last (the latter averaged over 8 views)."""
    net = _tiny_cnn(torch)
    opt = torch.optim.Adam(net.parameters(), lr=4e-3)
    batches = torch.arange(len(train_x)).split(8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(batches))
    first = 0.0
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(train_x)).split(8):
            x = _dihedral(torch, train_x[idx], int(torch.randint(8, ())))
            loss = torch.nn.functional.cross_entropy(net(x), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch == 0:
            first = _accuracy(torch, net, val_x, val_y)
    return first, _accuracy(torch, net, val_x, val_y, views=8)


def test_a_tiny_cnn_learns_the_phantom_but_not_at_once(tmp_path):
    torch = pytest.importorskip("torch")

    def tensors(root):
        images, labels = _load(root)
        return torch.tensor(images, dtype=torch.float32)[:, None] / 255.0 - 0.5, torch.tensor(labels)

    train = tensors(make_phantom(tmp_path / "train", n_per_class=40, size=64, seed=0))
    val = tensors(make_phantom(tmp_path / "val", n_per_class=40, size=64, seed=1))
    threads = torch.get_num_threads()
    # One thread: this net is too small to gain from two, and on a busy 2-core machine two threads spin-wait
    # on each other (measured: 5 epochs in 2.7 s with one thread, 23 s with two).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            first, last = _train_tiny_cnn(torch, *train, *val, epochs=30)
    finally:
        torch.set_num_threads(threads)
    # Seen with this recipe (36 torch seeds, one thread): 0.5 after one epoch, 0.76 to 0.81 after 30; chance is
    # 0.5. The faint, small and rim-only masses and the bright T2-like ventricles keep it well below 1. (With
    # lr 2e-3 one seed in twelve learnt a shortcut of the 80 training images and scored 0.5.)
    assert first < 1.0, f"the phantom is trivially easy: {first:.2f} after one epoch"
    assert last >= 0.7, f"a tiny CNN did not learn the phantom: validation accuracy {last:.2f} (chance 0.5)"


# ----------------------------------------------------------------------------------------------- DICOM
def test_the_dicom_phantom_is_one_series_per_patient_showing_the_pngs_grey_levels(tmp_path):
    from modules.phantom_dicom import patient_id

    root = make_phantom(tmp_path / "d", n_per_class=14, size=48, format="dicom", slices_per_patient=3)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("IM*"))
    assert len(files) == 28 and "yes/PHANTOM-YES-005/IM0002" in files  # 4 patients of 3 slices, one of 2
    assert "yes/PHANTOM-YES-005/IM0003" not in files
    data = prepare_data(root, seed=0)
    assert data.summary()["subjects"]["kinds"] == {"patient": 10}
    rec = {r.path: r for r in data.images.records}[f"no/{patient_id('no', 1)}/IM0002"]  # image 4 of no/
    assert rec.format == "DICOM" and rec.intensity == "DICOM VOI window"
    assert np.array_equal(rec.pixels, render_example(0, 4, size=48)[0])


def test_the_dicom_phantom_writes_the_same_bytes_every_time_and_refuses_foreign_files(tmp_path):
    first = make_phantom(tmp_path / "a", n_per_class=4, size=32, format="dicom", slices_per_patient=2)
    second = make_phantom(tmp_path / "b", n_per_class=4, size=32, format="dicom", slices_per_patient=2)
    assert [p.read_bytes() for p in sorted(first.rglob("IM*"))] == [
        p.read_bytes() for p in sorted(second.rglob("IM*"))
    ]
    make_phantom(first, n_per_class=4, size=32, format="dicom", slices_per_patient=2)  # the same set again
    (first / "yes" / "PHANTOM-YES-001" / "extra.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="yes/PHANTOM-YES-001/extra.dcm"):
        make_phantom(first, n_per_class=4, size=32, format="dicom", slices_per_patient=2)
    with pytest.raises(ValueError, match="format must be one of png, dicom"):
        make_phantom(tmp_path / "c", format="nifti")


def test_cli_writes_a_dicom_phantom(tmp_path, capsys):
    assert main([str(tmp_path / "d"), "--format", "dicom", "--n-per-class", "6", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 synthetic phantom DICOM images (not real MRI)" in out and "2 patients" in out
