"""Render deterministic synthetic brain-MRI "phantom" slices (``modules.phantom`` writes them as a set).

Each image is an axial-slice cartoon: dark background, bright scalp/skull ring around a dark bone band, brain
tissue with a grey/white-matter contrast, smooth low-frequency texture, a midline fissure and two ventricles,
then a multiplicative bias field, a per-image contrast/brightness change and noise. Every image also gets
distractors (small bright spots, thin bright "vessels", small dark lacunes), so the brightest pixel or the mean
intensity is not a perfect cue. The first class has no mass; every further class adds one mass of its own kind
(see `MASS_KINDS`): in the two-class set that is an irregular blob of a few overlapping ellipses, of varied size
and contrast, some of them small and faint, so the set is learnable but not trivially.

Determinism: image i of a class is drawn from its own generator, seeded by `SeedSequence(seed, spawn_key=
(class_index, i))`, so it does not depend on `n_per_class`. Only `Generator.random` is used (exact bits to
float64) and every pixel value is built from +, -, *, / and sqrt (all IEEE-754 correctly rounded), with no
trigonometry, exp or reductions whose results could differ by an ulp between platforms or numpy builds;
rotations come from the rational parametrisation t = tan(angle / 2).
"""

from __future__ import annotations

import math

import numpy as np

# The mass of class k (k >= 1) is MASS_KINDS[k - 1]; the first class never has one.
MASS_KINDS = ("irregular", "round_bright_peripheral", "ring_central", "diffuse")


# ----------------------------------------------------------------------------------------------- helpers
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _rotation(rng: np.random.Generator, t_max: float) -> tuple[float, float]:
    """(cos, sin) of a random angle with tan(angle / 2) uniform in [-t_max, t_max]; no trigonometry."""
    t = _u(rng, -t_max, t_max)
    d = 1.0 + t * t
    return (1.0 - t * t) / d, 2.0 * t / d


def _cover(dist: np.ndarray, w: float) -> np.ndarray:
    """Soft inside-ness: 1 where dist <= -w, 0 where dist >= w, smoothstep between (dist < 0 is inside)."""
    t = np.clip((dist + w) / (2.0 * w), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def _lerp(a: np.ndarray | float, b: np.ndarray | float, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1], (size, size): a (cells+1)^2 lattice, smoothstep-interpolated."""
    g = rng.random((cells + 1, cells + 1)) * 2.0 - 1.0
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (cells / size)
    i = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i
    f = f * f * (3.0 - 2.0 * f)
    fy, fx, iy, ix = f[:, None], f[None, :], i[:, None], i[None, :]
    top = g[iy, ix] * (1.0 - fx) + g[iy, ix + 1] * fx
    bottom = g[iy + 1, ix] * (1.0 - fx) + g[iy + 1, ix + 1] * fx
    return top * (1.0 - fy) + bottom * fy


class _Frame:
    """Pixel grid in head coordinates: (hu, hv) with the head outline at hu^2 + hv^2 = 1."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float64) * 2.0 + 1.0) / size - 1.0  # pixel centres in [-1, 1]
        self.x, self.y = c[None, :], c[:, None]
        self.a = _u(rng, 0.5, 0.8)  # half-width of the head, image half-widths
        self.b = min(self.a * _u(rng, 1.05, 1.28), 0.9)  # half-height: heads are longer front to back
        cx, cy = _u(rng, -0.15, 0.15), _u(rng, -0.12, 0.12)
        co, si = _rotation(rng, 0.27)  # about +-30 degrees
        dx, dy = self.x - cx, self.y - cy
        self.hu = (co * dx + si * dy) / self.a
        self.hv = (co * dy - si * dx) / self.b
        self.px = 2.0 / size / math.sqrt(self.a * self.b)  # one pixel, in head units

    def ellipse_dist(self, cu: float, cv: float, a: float, b: float, co: float, si: float) -> np.ndarray:
        """Approximate signed distance (head units, < 0 inside) to a rotated ellipse's edge."""
        du, dv = self.hu - cu, self.hv - cv
        p = (co * du + si * dv) / a
        q = (co * dv - si * du) / b
        return (np.sqrt(p * p + q * q) - 1.0) * math.sqrt(a * b)


# ----------------------------------------------------------------------------------------------- anatomy
def _brain_tissue(rng: np.random.Generator, fr: _Frame, r: np.ndarray, r_brain: float) -> np.ndarray:
    """Tissue intensity over the whole grid (only the part inside the brain is shown)."""
    base = _u(rng, 0.36, 0.52)
    # texture strong enough that two phantoms never look like copies of one picture (duplicate detection)
    tex = (
        1.0
        + _u(rng, 0.06, 0.14) * _lowfreq(rng, fr.size, 6)
        + _u(rng, 0.03, 0.06) * _lowfreq(rng, fr.size, 12)
    )
    r_wm = r + 0.06 * _lowfreq(rng, fr.size, 5)
    wm = _cover(r_wm - r_brain * _u(rng, 0.55, 0.72), 3.0 * fr.px)
    tissue = base * tex + _u(rng, -0.04, 0.12) * wm
    # Ventricles: two mirrored, outward-tilted ellipses near the centre; CSF is dark (T1-like) or, in one
    # image in ten, bright (T2-like): a bright symmetric pair that a bright-blob detector must learn to ignore.
    cv, half_gap = _u(rng, -0.14, 0.04), _u(rng, 0.07, 0.15)
    va, vb = _u(rng, 0.045, 0.1), _u(rng, 0.15, 0.3)
    co, si = _rotation(rng, 0.3)
    si = abs(si)
    delta = _u(rng, -0.3, -0.14) if rng.random() < 0.9 else _u(rng, 0.15, 0.35)
    for side in (-1.0, 1.0):
        k = _u(rng, 0.85, 1.15)
        d = fr.ellipse_dist(side * half_gap, cv, va * k, vb * k, co, side * si)
        tissue = tissue + delta * _cover(d, 1.0 * fr.px)
    # Interhemispheric fissure: a thin dark line on the midline, front and back.
    along = _cover(0.5 * r_brain - np.abs(fr.hv), 4.0 * fr.px)
    tissue = tissue - _u(rng, 0.06, 0.2) * along * _cover(np.abs(fr.hu) - 0.5 * fr.px, 0.8 * fr.px)
    return tissue


def _distractors(rng: np.random.Generator, fr: _Frame, r_brain: float) -> np.ndarray:
    """Additive small bright spots, thin bright vessels and dark lacunes; same law for every class."""
    out = np.zeros((fr.size, fr.size))
    for _ in range(int(rng.integers(0, 5))):  # bright spots
        cu, cv = _point_in_disc(rng, 0.85 * r_brain)
        rad = _u(rng, 0.6, 1.8) * fr.px
        out = out + _u(rng, 0.12, 0.45) * _cover(fr.ellipse_dist(cu, cv, rad, rad, 1.0, 0.0), 0.7 * fr.px)
    for _ in range(int(rng.integers(0, 4))):  # vessels
        cu, cv = _point_in_disc(rng, 0.75 * r_brain)
        co, si = _rotation(rng, 1.0)
        d = fr.ellipse_dist(cu, cv, _u(rng, 0.08, 0.25), _u(rng, 0.5, 1.0) * fr.px, co, si)
        out = out + _u(rng, 0.08, 0.3) * _cover(d, 0.6 * fr.px)
    for _ in range(int(rng.integers(0, 3))):  # lacunes
        cu, cv = _point_in_disc(rng, 0.8 * r_brain)
        rad = _u(rng, 0.8, 2.0) * fr.px
        out = out - _u(rng, 0.1, 0.25) * _cover(fr.ellipse_dist(cu, cv, rad, rad, 1.0, 0.0), 0.7 * fr.px)
    return out


def _point_in_disc(rng: np.random.Generator, radius: float, inner: float = 0.0) -> tuple[float, float]:
    """Uniform point in the annulus inner <= |p| <= radius (head units), by rejection (no trigonometry)."""
    assert 0.0 <= inner < radius, (inner, radius)  # else the loop below would never end
    while True:
        u, v = _u(rng, -radius, radius), _u(rng, -radius, radius)
        if inner * inner <= u * u + v * v <= radius * radius:
            return u, v


# ----------------------------------------------------------------------------------------------- masses
def _blob(
    rng: np.random.Generator,
    fr: _Frame,
    centre: tuple[float, float],
    radius: float,
    *,
    lobes: int,
    roundness: float,
) -> list[tuple[float, ...]]:
    """A few overlapping ellipses (cu, cv, a, b, cos, sin) around `centre`: an irregular mass outline."""
    out = []
    for k in range(lobes):
        spread = 0.0 if k == 0 else 0.55 * radius
        du, dv = _u(rng, -spread, spread), _u(rng, -spread, spread)
        a = radius * _u(rng, 0.6, 1.0)
        b = a * _u(rng, roundness, 1.0)
        co, si = _rotation(rng, 1.0)
        out.append((centre[0] + du, centre[1] + dv, a, b, co, si))
    return out


def _blob_weight(fr: _Frame, lobes: list[tuple[float, ...]], edge: float, scale: float = 1.0) -> np.ndarray:
    """Soft union of the lobes, each shrunk about the first lobe's centre by `scale`."""
    cu0, cv0 = lobes[0][0], lobes[0][1]
    w = np.zeros((fr.size, fr.size))
    for cu, cv, a, b, co, si in lobes:
        d = fr.ellipse_dist(cu0 + (cu - cu0) * scale, cv0 + (cv - cv0) * scale, a * scale, b * scale, co, si)
        w = np.maximum(w, _cover(d, edge))
    return w


def _mass(rng: np.random.Generator, fr: _Frame, r_brain: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(additive intensity change, coverage 0..1) of one mass of the given kind."""
    px = fr.px
    min_radius = 2.0 * px  # keeps even the smallest mass a few pixels wide at 32 px
    if kind == "irregular":
        # Mostly medium and bright, like the enhancing tumours of the real set; about one in seven is small,
        # one in twelve dark with a bright rim and one in eight faint (either sign), so the task is learnable
        # from a few dozen images (tests/test_phantom.py) but a perfect score needs more than a blob detector.
        small = rng.random() < 0.15
        radius = max(r_brain * (_u(rng, 0.11, 0.16) if small else _u(rng, 0.17, 0.32)), min_radius)
        centre = _point_in_disc(rng, 0.78 * r_brain - radius)
        lobes = _blob(rng, fr, centre, radius, lobes=int(rng.integers(2, 5)), roundness=0.45)
        w = _blob_weight(fr, lobes, _u(rng, 0.6, 2.5) * px)
        tex = 1.0 + 0.25 * _lowfreq(rng, fr.size, 12)  # heterogeneous inside
        mode = rng.random()
        if mode < 0.8:  # brighter than tissue
            return _u(rng, 0.28, 0.45) * w * tex, w
        if mode < 0.88:  # darker core with a bright rim
            core = _blob_weight(fr, lobes, _u(rng, 0.6, 1.5) * px, scale=0.7)
            return (_u(rng, 0.2, 0.35) * (w - core) + _u(rng, -0.3, -0.15) * core) * tex, w
        return _u(rng, 0.05, 0.1) * (1.0 if rng.random() < 0.5 else -1.0) * w * tex, w  # faint
    if kind == "round_bright_peripheral":
        radius = max(r_brain * _u(rng, 0.1, 0.2), min_radius)
        outer = 0.86 * r_brain - radius  # a small head at 32 px leaves little room for the minimum radius
        centre = _point_in_disc(rng, outer, inner=min(0.6 * r_brain, 0.5 * outer))
        lobes = _blob(rng, fr, centre, radius, lobes=1, roundness=0.85)
        w = _blob_weight(fr, lobes, _u(rng, 0.5, 1.2) * px)
        return _u(rng, 0.2, 0.4) * w, w
    if kind == "ring_central":
        radius = max(r_brain * _u(rng, 0.14, 0.26), 2.0 * min_radius)
        centre = _point_in_disc(rng, 0.35 * r_brain)
        lobes = _blob(rng, fr, centre, radius, lobes=int(rng.integers(2, 4)), roundness=0.5)
        edge = _u(rng, 0.6, 1.5) * px
        outer, core = _blob_weight(fr, lobes, edge), _blob_weight(fr, lobes, edge, scale=0.7)
        return _u(rng, 0.18, 0.35) * (outer - core) + _u(rng, -0.3, -0.15) * core, outer
    if kind == "diffuse":
        radius = max(r_brain * _u(rng, 0.2, 0.32), min_radius)
        centre = _point_in_disc(rng, 0.8 * r_brain - radius)
        lobes = _blob(rng, fr, centre, radius, lobes=int(rng.integers(3, 6)), roundness=0.4)
        delta = _u(rng, 0.06, 0.14) * (1.0 if rng.random() < 0.5 else -1.0)
        w = _blob_weight(fr, lobes, _u(rng, 3.0, 6.0) * px)
        return delta * w, w
    raise ValueError(f"unknown mass kind {kind!r}; expected one of {', '.join(MASS_KINDS)}")


# ----------------------------------------------------------------------------------------------- slices
def render_slice(
    rng: np.random.Generator, *, size: int, mass: bool, kind: str = "irregular"
) -> tuple[np.ndarray, np.ndarray | None]:
    """One synthetic axial slice.

    Returns (image, mask): image is uint8 (size, size); mask is a bool (size, size) array of the pixels where
    the mass makes up at least half the tissue when `mass` is true, else None. `kind` (one of `MASS_KINDS`)
    picks the kind of mass and is ignored when `mass` is false. All randomness comes from `rng`.
    """
    if mass and kind not in MASS_KINDS:
        raise ValueError(f"unknown mass kind {kind!r}; expected one of {', '.join(MASS_KINDS)}")
    fr = _Frame(rng, size)
    # an irregular head outline, its own in every image
    r = np.sqrt(fr.hu * fr.hu + fr.hv * fr.hv) * (1.0 + _u(rng, 0.03, 0.08) * _lowfreq(rng, size, 3))
    scalp, bone = _u(rng, 0.05, 0.09), _u(rng, 0.03, 0.06)
    r_brain = 1.0 - scalp - bone
    w = 0.7 * fr.px
    img = _u(rng, 0.7, 0.95) * _cover(r - 1.0, w)  # scalp and skull: the bright ring
    img = _lerp(img, _u(rng, 0.06, 0.16), _cover(r - (1.0 - scalp), w))  # dark bone band
    brain = _cover(r + 0.02 * _lowfreq(rng, size, 8) - r_brain, w)
    tissue = _brain_tissue(rng, fr, r, r_brain)
    mask = None
    if mass:
        change, coverage = _mass(rng, fr, r_brain, kind)
        tissue = tissue + change
        mask = coverage * brain >= 0.5
    tissue = tissue + _distractors(rng, fr, r_brain)
    img = _lerp(img, tissue, brain)
    img = _finish(rng, fr, img)
    return img, mask


def _finish(rng: np.random.Generator, fr: _Frame, img: np.ndarray) -> np.ndarray:
    """Bias field, contrast, brightness, gamma-like curve and noise; float image to uint8."""
    gx, gy = _u(rng, -1.0, 1.0), _u(rng, -1.0, 1.0)
    bias = 1.0 + _u(rng, 0.0, 0.18) * (gx * fr.x + gy * fr.y) + _u(rng, 0.0, 0.12) * _lowfreq(rng, fr.size, 3)
    img = np.clip(img * bias * _u(rng, 0.8, 1.15) + _u(rng, -0.04, 0.06), 0.0, 1.0)
    img = img + _u(rng, -0.35, 0.35) * img * (1.0 - img)  # a polynomial stand-in for a gamma change
    sigma = _u(rng, 0.012, 0.04) * 2.449  # the triangular noise below has a standard deviation of 1/2.449
    img = np.abs(img + sigma * (rng.random(img.shape) - rng.random(img.shape)))
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator of image `index` of class `class_index`; it does not depend on how many are drawn."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_index, index)))


def mass_kind(class_index: int) -> str | None:
    """Kind of mass drawn in class `class_index` (None for the first class, which has none)."""
    return None if class_index == 0 else MASS_KINDS[class_index - 1]


def render_example(
    class_index: int, index: int, *, size: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, mask) of file <class>_<index>.png as `make_phantom` writes it: lets tests get the true mask."""
    kind = mass_kind(class_index)
    return render_slice(
        image_rng(seed, class_index, index), size=size, mass=kind is not None, kind=kind or MASS_KINDS[0]
    )
