"""Procedural HPA-like cells: one 4-stain image whose green pattern follows its labels.

All geometry is drawn in normalised image coordinates ([0, 1]^2) before anything that
depends on the output size, so one seed renders the same scene at 64 or 512 px (only
the pixel noise differs). Shapes are evaluated as vectorised numpy fields and OpenCV
primitives (splatted points + Gaussian blur, polylines, circles): no per-pixel Python.

Stains follow the HPA protocol: blue = nucleus (DAPI), red = microtubules, yellow =
endoplasmic reticulum, green = the protein of interest, whose pattern is the label.
Every class has its own rule, chosen after the HPA cell atlas descriptions (nucleoli are
blobs inside the nucleus, fibrillar centres small dots inside nucleoli, the Golgi a
perinuclear crescent, microtubules radiate from the centrosome, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

Rng = np.random.Generator


# --------------------------------------------------------------------------- geometry
def _shape_dist(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, aspect: float,
                phi: float, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Normalised distance to a wobbly ellipse: < 1 inside, 1 on the outline.

    The outline radius is ``r * (1 + sum_k amps[k] cos((k+2) theta + phases[k]))``.
    """
    # Python floats keep float32 grids in float32 (numpy scalars would promote, NEP 50).
    cx, cy, r, aspect = float(cx), float(cy), float(r), float(aspect)
    dx, dy = x - cx, y - cy
    c, s = float(np.cos(phi)), float(np.sin(phi))
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / (r * aspect)
    rho = np.sqrt(u * u + v * v) + 1e-9
    ct, st = u / rho, v / rho
    # cos/sin of 2, 3 and 4 theta from Chebyshev recurrences: cheaper than arctan2.
    c2, s2 = 2 * ct * ct - 1, 2 * st * ct
    c3, s3 = c2 * ct - s2 * st, s2 * ct + c2 * st
    c4, s4 = c3 * ct - s3 * st, s3 * ct + c3 * st
    rad = 1.0
    for a, p, ck, sk in zip(amps, phases, (c2, c3, c4), (s2, s3, s4), strict=True):
        rad = rad + (float(a * np.cos(p)) * ck - float(a * np.sin(p)) * sk)
    return rho / rad


@dataclass
class _Shape:
    cx: float
    cy: float
    r: float
    aspect: float
    phi: float
    amps: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, rng: Rng, cx: float, cy: float, r: float, wobble: float,
               aspect: tuple[float, float]) -> _Shape:
        return cls(cx, cy, r, rng.uniform(*aspect), rng.uniform(0, np.pi),
                   rng.uniform(0, wobble, 3), rng.uniform(0, 2 * np.pi, 3))

    def dist(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _shape_dist(x, y, self.cx, self.cy, self.r, self.aspect, self.phi, self.amps,
                           self.phases)

    def point(self, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Points at normalised radius ``rho`` and angle ``theta`` of this shape. (m, 2)."""
        rad = 1.0 + sum(a * np.cos((k + 2) * theta + p)
                        for k, (a, p) in enumerate(zip(self.amps, self.phases, strict=True)))
        u = rho * rad * np.cos(theta) * self.r
        v = rho * rad * np.sin(theta) * self.r * self.aspect
        c, s = np.cos(self.phi), np.sin(self.phi)
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=-1)


@dataclass
class _Cell:
    body: _Shape
    nucleus: _Shape
    nucleoli: np.ndarray  # (m, 3): x, y, radius
    golgi_angle: float  # the side of the nucleus where Golgi, centrosome, aggresome sit
    centrosome: np.ndarray  # (2,)
    expression: float  # cell-to-cell variation of the green stain
    mitotic: bool = False
    spindle_axis: float = 0.0


@dataclass
class Scene:
    """Cells of one image plus the distance fields rendered at ``size`` px."""

    size: int
    cells: list[_Cell]
    rng: Rng
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict)

    @property
    def px(self) -> float:
        """One pixel in normalised units."""
        return 1.0 / self.size


def _make_cells(rng: Rng, mitotic_cell: bool) -> list[_Cell]:
    """Cells on a jittered 2x2 or 3x3 grid; some slots empty so free edges exist."""
    g = int(rng.choice([2, 3], p=[0.45, 0.55]))
    pitch = 1.0 / g
    slots = [(i, j) for i in range(g) for j in range(g)]
    keep = rng.random(len(slots)) < 0.85
    keep[rng.integers(len(slots))] = True  # never an empty image
    cells = []
    for (i, j), k in zip(slots, keep, strict=True):
        jitter = rng.uniform(-0.13, 0.13, 2) * pitch
        if not k:
            continue
        cx, cy = (j + 0.5) * pitch + jitter[0], (i + 0.5) * pitch + jitter[1]
        r = pitch * rng.uniform(0.5, 0.64)
        body = _Shape.random(rng, cx, cy, r, 0.09, (0.72, 1.0))
        off = rng.uniform(0, 0.16 * r)
        ang = rng.uniform(0, 2 * np.pi)
        rn = r * rng.uniform(0.36, 0.46)
        nucleus = _Shape.random(rng, cx + off * np.cos(ang), cy + off * np.sin(ang), rn, 0.05,
                                (0.75, 1.0))
        m = int(rng.integers(1, 5))
        rho = np.sqrt(rng.uniform(0, 0.45, m))
        nl = nucleus.point(rho, rng.uniform(0, 2 * np.pi, m))
        nucleoli = np.column_stack([nl, rn * rng.uniform(0.12, 0.2, m)])
        golgi = rng.uniform(0, 2 * np.pi)
        centro = nucleus.point(np.array(1.2), np.array(golgi))
        cells.append(_Cell(body, nucleus, nucleoli, golgi, centro, rng.uniform(0.5, 1.0)))
    if mitotic_cell:
        c = cells[int(rng.integers(len(cells)))]
        c.mitotic = True
        c.spindle_axis = rng.uniform(0, np.pi)
        c.body.aspect, c.body.amps = rng.uniform(0.9, 1.0), c.body.amps * 0.3
        c.nucleus.cx, c.nucleus.cy = c.body.cx, c.body.cy
    return cells


def _fields(cells: list[_Cell], size: int) -> dict[str, np.ndarray]:
    """Distance fields at ``size`` px: computed at <= 128 px and resized (they are smooth).

    dmin: distance to the nearest cell (normalised, < 1 inside); d2: to the second
    nearest; dn: to the owner's nucleus; owner: index of the nearest cell; rpx: the
    owner's radius in pixels.
    """
    g = min(size, 128)
    t = (np.arange(g, dtype=np.float32) + 0.5) / g
    x, y = np.meshgrid(t, t)
    d = np.stack([c.body.dist(x, y) for c in cells]).astype(np.float32)
    dn = np.stack([c.nucleus.dist(x, y) if not c.mitotic else np.full_like(x, 9.0)
                   for c in cells]).astype(np.float32)
    owner = np.argmin(d, axis=0)
    dmin = np.take_along_axis(d, owner[None], 0)[0]
    d2 = np.partition(d, 1, axis=0)[1] if len(cells) > 1 else np.full_like(dmin, 9.0)
    dnuc = np.take_along_axis(dn, owner[None], 0)[0]
    out = {"dmin": dmin, "d2": d2, "dn": dnuc}
    if g != size:
        out = {k: cv2.resize(v, (size, size), interpolation=cv2.INTER_LINEAR)
               for k, v in out.items()}
        owner = cv2.resize(owner.astype(np.uint8), (size, size),
                           interpolation=cv2.INTER_NEAREST)
    out["owner"] = owner.astype(np.intp)
    radius = np.array([c.body.r for c in cells], np.float32) * size
    out["rpx"] = radius[out["owner"]]
    return out


# --------------------------------------------------------------------------- drawing
def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a shrunken copy (the result is smooth anyway)."""
    sigma_px = max(sigma_px, 0.5)
    f = int(sigma_px // 3)
    if f < 2 or img.shape[0] % f:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    n = img.shape[0]
    small = cv2.resize(img, (n // f, n // f), interpolation=cv2.INTER_AREA) * np.float32(f * f)
    # Area-shrinking acts as a box of width f (variance f^2/12): take it off the Gaussian.
    sig = np.sqrt(max(sigma_px**2 - f * f / 12, 0.25)) / f
    small = cv2.GaussianBlur(small, (0, 0), sig, borderType=cv2.BORDER_CONSTANT)
    return cv2.resize(small, (n, n), interpolation=cv2.INTER_LINEAR) / np.float32(f * f)


def spots(size: int, pts: np.ndarray, amps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian spots (peak ``amps``) at normalised points. Shape: (m, 2) -> (S, S)."""
    out = np.zeros((size, size), np.float32)
    if len(pts) == 0:
        return out
    p = pts * size - 0.5
    i0 = np.floor(p).astype(np.intp)
    f = (p - i0).astype(np.float32)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # bilinear splat: sub-pixel positions
        w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
        xi, yi = i0[:, 0] + dx, i0[:, 1] + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        np.add.at(out, (yi[ok], xi[ok]), (amps * w)[ok])
    s = max(sigma * size, 0.5)
    return _blur(out, s) * np.float32(2 * np.pi * s * s)


def lines(size: int, polys: list[np.ndarray], amps: np.ndarray | list[float],
          width: float) -> np.ndarray:
    """Polylines of normalised points, ``width`` in normalised units."""
    out = np.zeros((size, size), np.float32)
    th = max(1, int(round(width * size)))
    for poly, a in zip(polys, amps, strict=True):
        if len(poly) >= 2:
            pts = np.round(poly * size * 16).astype(np.int32)  # shift=4: sub-pixel precision
            cv2.polylines(out, [pts], False, float(a), th, cv2.LINE_8, shift=4)
    return out  # smoothed by the optical blur applied to every stain in render()


def rings(size: int, centers: np.ndarray, radii: np.ndarray, amps: np.ndarray,
          width: float) -> np.ndarray:
    """Hollow circles (lipid droplets, rods & rings)."""
    out = np.zeros((size, size), np.float32)
    th = max(1, int(round(width * size)))
    for (x, y), r, a in zip(centers, radii, amps, strict=True):
        c = (int(round(x * size * 16)), int(round(y * size * 16)))
        cv2.circle(out, c, max(int(round(r * size * 16)), 16), float(a), th, cv2.LINE_8, shift=4)
    return out


def smooth_noise(rng: Rng, cells_per_side: int, size: int) -> np.ndarray:
    """Smooth random field with unit std: a coarse grid drawn first, resized to size."""
    coarse = rng.standard_normal((cells_per_side, cells_per_side)).astype(np.float32)
    up = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 1 where x < -2 width, 0 where x > 2 width, linear between."""
    return np.clip(0.5 - x * np.float32(0.25 / width), 0, 1, dtype=np.float32)


# ------------------------------------------------------------------ sampling in cells
def _owner_of(cells: list[_Cell], pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.stack([c.body.dist(pts[:, 0], pts[:, 1]) for c in cells])
    return np.argmin(d, axis=0), d.min(axis=0)


def sample_cyto(sc: Scene, k: int, n: int, rho: tuple[float, float] = (0.0, 0.93),
                min_dn: float = 1.12) -> np.ndarray:
    """``n`` points in the cytoplasm of cell ``k`` (outside the nucleus, inside its own
    territory), radius ``rho`` of the cell shape. (n, 2); fewer if the cell is crowded."""
    cell, rng = sc.cells[k], sc.rng
    m = 4 * n + 8  # candidates drawn in one go: the count never depends on the size
    r = np.sqrt(rng.uniform(rho[0] ** 2, rho[1] ** 2, m))
    pts = cell.body.point(r, rng.uniform(0, 2 * np.pi, m))
    own, _ = _owner_of(sc.cells, pts)
    ok = (own == k)
    if not cell.mitotic:
        ok &= cell.nucleus.dist(pts[:, 0], pts[:, 1]) > min_dn
    return pts[ok][:n]


def sample_nucleus(sc: Scene, k: int, n: int, rho: float = 0.85) -> np.ndarray:
    """``n`` points inside the nucleus of cell ``k``. (n, 2)."""
    nuc = sc.cells[k].nucleus
    return nuc.point(np.sqrt(sc.rng.uniform(0, rho * rho, n)), sc.rng.uniform(0, 2 * np.pi, n))


def clip_polys(sc: Scene, owners: list[int], polys: list[np.ndarray],
               lim: float = 0.96) -> list[tuple[int, np.ndarray]]:
    """Cut polylines to the runs of points inside their own cell (``owners[i]``).

    One distance evaluation for all points: per-fibre calls dominated the render time.
    """
    if not polys:
        return []
    pts = np.concatenate(polys)
    own, d = _owner_of(sc.cells, pts)
    want = np.repeat(np.asarray(owners), [len(p) for p in polys])
    inside = ((own == want) & (d < lim)).astype(np.int8)
    lens = np.array([len(p) for p in polys])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    full = np.add.reduceat(inside, starts) == lens
    out = []
    for k, poly, start, whole in zip(owners, polys, starts, full, strict=True):
        if whole:  # the common case, without the run search
            out.append((k, poly))
            continue
        ins = np.concatenate([[0], inside[start:start + len(poly)], [0]])
        edges = np.flatnonzero(np.diff(ins))  # starts and ends of the inside runs
        out += [(k, poly[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 2]
    return out


def _bent(p0: np.ndarray, p1: np.ndarray, bend: np.ndarray | float,
          phase: np.ndarray | float, n: int = 12) -> np.ndarray:
    """Points from p0 to p1 bent sideways by ``bend`` (normalised units) in a sine.

    Shape: p0, p1 (..., 2), bend and phase (...) -> (..., n, 2): many fibres in one call.
    """
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    bend, phase = np.asarray(bend)[..., None, None], np.asarray(phase)[..., None, None]
    t = np.linspace(0, 1, n)[:, None]
    d = (p1 - p0)[..., None, :]
    perp = np.stack([-d[..., 1], d[..., 0]], -1) / (np.hypot(d[..., 0], d[..., 1])[..., None]
                                                      + 1e-9)
    return p0[..., None, :] + t * d + perp * bend * np.sin(np.pi * t * (1 + phase) + phase)


def microtubules(sc: Scene) -> list[tuple[int, np.ndarray]]:
    """Radial fibres from each centrosome to the cell edge, shared by red and class 14."""
    if "mt" in sc.cache:
        return sc.cache["mt"]  # type: ignore[return-value]
    owners, polys = [], []
    for k, c in enumerate(sc.cells):
        if c.mitotic:
            continue
        n = int(sc.rng.integers(22, 36))
        theta = np.sort(sc.rng.uniform(0, 2 * np.pi, n))
        ends = c.body.point(np.full(n, 0.97), theta)
        bends, phases = sc.rng.normal(0, 0.06, n) * c.body.r, sc.rng.uniform(0, 1, n)
        owners += [k] * n
        polys += list(_bent(np.broadcast_to(c.centrosome, ends.shape), ends, bends, phases, 16))
    sc.cache["mt"] = clip_polys(sc, owners, polys, 0.97)
    return sc.cache["mt"]  # type: ignore[return-value]


def spindle(sc: Scene, k: int) -> list[np.ndarray]:
    """Bipolar fan of fibres between two poles plus short astral rays (a mitotic spindle)."""
    c = sc.cells[k]
    ax = np.array([np.cos(c.spindle_axis), np.sin(c.spindle_axis)])
    ctr = np.array([c.body.cx, c.body.cy])
    a, b = ctr - 0.42 * c.body.r * ax, ctr + 0.42 * c.body.r * ax
    n = int(sc.rng.integers(12, 20))
    w = sc.rng.normal(0, 0.13, n) * c.body.r
    fibres = list(_bent(np.broadcast_to(a, (n, 2)), np.broadcast_to(b, (n, 2)), w,
                        sc.rng.uniform(-0.05, 0.05, n), 14))
    m = int(sc.rng.integers(6, 12))
    th = sc.rng.uniform(0, 2 * np.pi, m)
    pole = np.where(np.cos(th - c.spindle_axis)[:, None] > 0, b, a)
    ray = 0.2 * c.body.r * np.column_stack([np.cos(th), np.sin(th)])
    return fibres + list(np.stack([pole, pole + ray], axis=1))


# -------------------------------------------------------------- the 28 green patterns
def _nucleus_mask(sc: Scene) -> np.ndarray:
    f = sc.fields
    return _soft(f["dn"] - 1.0, 0.04) * _soft(f["dmin"] - 1.0, 0.03)


def _cyto_mask(sc: Scene) -> np.ndarray:
    f = sc.fields
    return _soft(f["dmin"] - 0.98, 0.03) * (1 - _soft(f["dn"] - 1.05, 0.04))


def _rim(dist: np.ndarray, rpx: np.ndarray, width_px: float, at: float = 1.0) -> np.ndarray:
    """A thin line along ``dist == at``, about ``width_px`` wide whatever the cell size."""
    w = np.maximum(width_px / rpx, 0.02)
    return np.exp(-(((dist - at) / w) ** 2)).astype(np.float32)


def _nucleoli_layer(sc: Scene) -> np.ndarray:
    if "nlo" not in sc.cache:
        nl = [c.nucleoli for c in sc.cells if not c.mitotic]
        pts = np.concatenate(nl) if nl else np.zeros((0, 3))
        layer = np.zeros((sc.size, sc.size), np.float32)
        for r in np.unique(np.round(pts[:, 2], 3)):  # one blur per nucleolus size
            sel = np.round(pts[:, 2], 3) == r
            layer += spots(sc.size, pts[sel, :2], np.ones(sel.sum()), r * 0.75)
        sc.cache["nlo"] = np.clip(layer, 0, 1)
    return sc.cache["nlo"]  # type: ignore[return-value]


def _per_cell_spots(sc: Scene, where: str, count: tuple[int, int], sigma_r: float,
                    amp: tuple[float, float] = (0.7, 1.0), **kw: float) -> np.ndarray:
    """Spots in every cell: ``where`` is 'nucleus' or 'cyto'; sigma relative to the cell."""
    layers: dict[float, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for k, c in enumerate(sc.cells):
        n = int(sc.rng.integers(*count))
        if where == "nucleus":
            if c.mitotic:
                continue
            pts = sample_nucleus(sc, k, n, **kw)
        else:
            pts = sample_cyto(sc, k, n, **kw)
        s = round(sigma_r * c.body.r, 4)
        layers.setdefault(s, ([], []))
        layers[s][0].append(pts)
        layers[s][1].append(sc.rng.uniform(*amp, len(pts)) * c.expression)
    out = np.zeros((sc.size, sc.size), np.float32)
    for s, (p, a) in layers.items():
        out += spots(sc.size, np.concatenate(p), np.concatenate(a), s)
    return out


def _expression(sc: Scene) -> np.ndarray:
    e = np.array([c.expression for c in sc.cells], np.float32)
    return e[sc.fields["owner"]]


def g_nucleoplasm(sc: Scene) -> np.ndarray:
    tex = 0.8 + 0.2 * smooth_noise(sc.rng, 24, sc.size)
    return _nucleus_mask(sc) * tex * (1 - 0.85 * _nucleoli_layer(sc)) * _expression(sc)


def g_nuclear_membrane(sc: Scene) -> np.ndarray:
    f = sc.fields
    return _rim(f["dn"], f["rpx"] * 0.42, 1.3) * _soft(f["dmin"] - 1, 0.03) * _expression(sc)


def g_nucleoli(sc: Scene) -> np.ndarray:
    return _nucleoli_layer(sc) * _expression(sc)


def g_fibrillar_center(sc: Scene) -> np.ndarray:
    """A few small dots inside each nucleolus, over a faint nucleolar stain."""
    pts, amps = [], []
    for c in sc.cells:
        if c.mitotic:
            continue
        for x, y, r in c.nucleoli:
            m = int(sc.rng.integers(2, 6))
            rho, th = r * 0.55 * np.sqrt(sc.rng.random(m)), sc.rng.uniform(0, 2 * np.pi, m)
            pts.append(np.column_stack([x + rho * np.cos(th), y + rho * np.sin(th)]))
            amps.append(sc.rng.uniform(0.8, 1.0, m) * c.expression)
    faint = 0.25 * _nucleoli_layer(sc) * _expression(sc)
    if not pts:
        return faint
    sigma = 0.025 * np.mean([c.body.r for c in sc.cells])
    return spots(sc.size, np.concatenate(pts), np.concatenate(amps), sigma) + faint


def g_speckles(sc: Scene) -> np.ndarray:
    spk = _per_cell_spots(sc, "nucleus", (12, 24), 0.045, (0.4, 1.0))
    return spk + 0.15 * _nucleus_mask(sc) * _expression(sc)


def g_nuclear_bodies(sc: Scene) -> np.ndarray:
    return _per_cell_spots(sc, "nucleus", (2, 8), 0.022, (0.85, 1.0), rho=0.8)


def er_field(sc: Scene) -> np.ndarray:
    """Reticular network, dense around the nucleus (shared by yellow and class 6)."""
    if "er" not in sc.cache:
        f = sc.fields
        ridges = np.exp(-((smooth_noise(sc.rng, 64, sc.size) / 0.4) ** 2))
        near = np.clip(1.2 - f["dmin"], 0, 1)
        er = (0.75 * ridges + 0.25) * near * _cyto_mask(sc)
        er += 0.5 * _rim(f["dn"], f["rpx"] * 0.42, 1.5, 1.05) * _soft(f["dmin"] - 1, 0.03)
        sc.cache["er"] = er.astype(np.float32)
    return sc.cache["er"]  # type: ignore[return-value]


def g_er(sc: Scene) -> np.ndarray:
    return er_field(sc) * _expression(sc)


def g_golgi(sc: Scene) -> np.ndarray:
    pts, amps, polys = [], [], []
    for c in sc.cells:
        m = int(sc.rng.integers(6, 13))
        th = c.golgi_angle + sc.rng.normal(0, 0.3, m)
        p = c.nucleus.point(sc.rng.uniform(1.08, 1.35, m), th)
        pts.append(p)
        amps.append(sc.rng.uniform(0.6, 1.0, m) * c.expression)
        order = np.argsort(th)
        polys.append(p[order])  # stacked cisternae: a ribbon through the blobs
    sigma = 0.045 * np.mean([c.body.r for c in sc.cells])
    blobs = spots(sc.size, np.concatenate(pts), np.concatenate(amps), sigma)
    ribbon = lines(sc.size, polys, [0.4 * c.expression for c in sc.cells], sigma * 0.6)
    return blobs + ribbon


def g_peroxisomes(sc: Scene) -> np.ndarray:
    return _per_cell_spots(sc, "cyto", (45, 80), 0.014, (0.6, 1.0))


def g_endosomes(sc: Scene) -> np.ndarray:
    return _per_cell_spots(sc, "cyto", (18, 34), 0.03, (0.35, 1.0))


def g_lysosomes(sc: Scene) -> np.ndarray:
    return _per_cell_spots(sc, "cyto", (10, 20), 0.05, (0.7, 1.0), rho=(0.0, 0.7))


def g_intermediate_filaments(sc: Scene) -> np.ndarray:
    owners, polys = [], []
    for k, c in enumerate(sc.cells):
        for _ in range(int(sc.rng.integers(9, 16))):
            t0, span = sc.rng.uniform(0, 2 * np.pi), sc.rng.uniform(1.5, 3.5)
            t = np.linspace(0, span, 40)
            rho = sc.rng.uniform(0.45, 0.85) + 0.07 * np.sin(
                sc.rng.uniform(2, 6) * t + sc.rng.uniform(0, 6))
            owners.append(k)
            polys.append(c.body.point(rho, t0 + t))
    runs = clip_polys(sc, owners, polys)
    amps = sc.rng.uniform(0.6, 1.0, len(runs)) * [sc.cells[k].expression for k, _ in runs]
    return lines(sc.size, [p for _, p in runs], amps, 0.004)


def g_actin(sc: Scene) -> np.ndarray:
    owners, polys = [], []
    for k, c in enumerate(sc.cells):
        psi = c.body.phi + sc.rng.normal(0, 0.15)
        ax, nrm = np.array([np.cos(psi), np.sin(psi)]), np.array([-np.sin(psi), np.cos(psi)])
        ctr = np.array([c.body.cx, c.body.cy])
        t = np.linspace(-1.1, 1.1, 40)[:, None] * c.body.r
        for off in sc.rng.uniform(-0.85, 0.85, int(sc.rng.integers(6, 12))) * c.body.r:
            tilt = sc.rng.normal(0, 0.04)
            owners.append(k)
            polys.append(ctr + off * nrm + t * (ax + tilt * nrm))
    runs = clip_polys(sc, owners, polys, 0.94)
    amps = sc.rng.uniform(0.6, 1.0, len(runs)) * [sc.cells[k].expression for k, _ in runs]
    return lines(sc.size, [p for _, p in runs], amps, 0.003)


def g_focal_adhesions(sc: Scene) -> np.ndarray:
    """Elongated plaques at the cell edge, each at the end of a faint stress fibre."""
    plaques, fibres, amps = [], [], []
    for k, c in enumerate(sc.cells):
        m = int(sc.rng.integers(8, 16))
        th = sc.rng.uniform(0, 2 * np.pi, m)
        inner = c.body.point(np.full(m, 0.82), th)
        outer = c.body.point(np.full(m, 0.95), th)
        root = c.body.point(np.full(m, 0.35), th + sc.rng.normal(0, 0.2, m))
        own, _ = _owner_of(sc.cells, outer)
        for a, b, r, ok in zip(inner, outer, root, own == k, strict=True):
            if ok:
                plaques.append(np.stack([a, b]))
                fibres.append(np.stack([r, a]))
                amps.append(sc.rng.uniform(0.8, 1.0) * c.expression)
    return (lines(sc.size, plaques, amps, 0.009)
            + lines(sc.size, fibres, [0.2 * a for a in amps], 0.002))


def g_microtubules(sc: Scene) -> np.ndarray:
    mt = microtubules(sc)
    e = [sc.cells[k].expression * 0.8 for k, _ in mt]
    return lines(sc.size, [p for _, p in mt], e, 0.0025) + 0.1 * _cyto_mask(sc)


def g_microtubule_ends(sc: Scene) -> np.ndarray:
    """Small comets at growing plus ends, anywhere along the microtubules (EB1-like)."""
    comets, amps = [], []
    for k, poly in microtubules(sc):
        if len(poly) < 4:
            continue
        for _ in range(int(sc.rng.integers(1, 3))):
            i = int(sc.rng.integers(len(poly) // 3, len(poly) - 1))
            head = poly[i] + 0.4 * (poly[i + 1] - poly[i])
            comets.append(np.stack([poly[i], head]))
            amps.append(sc.rng.uniform(0.6, 1.0) * sc.cells[k].expression)
    comet_layer = lines(sc.size, comets, amps, 0.0035) * (1 - _nucleus_mask(sc))
    return comet_layer + 0.08 * _cyto_mask(sc)


def g_cytokinetic_bridge(sc: Scene) -> np.ndarray:
    ctr = np.array([[c.body.cx, c.body.cy] for c in sc.cells])
    if len(ctr) >= 2:
        d = np.hypot(*(ctr[:, None] - ctr[None]).transpose(2, 0, 1)) + np.eye(len(ctr)) * 9
        i, j = np.unravel_index(np.argmin(d), d.shape)
        a, b = ctr[i], ctr[j]
    else:
        a = ctr[0]
        b = sc.cells[0].body.point(np.array(1.6), np.array(sc.rng.uniform(0, 2 * np.pi)))
    p0, p1 = a + 0.3 * (b - a), a + 0.7 * (b - a)
    bridge = lines(sc.size, [_bent(p0, p1, 0.01, 0.3)], [0.9], 0.005)
    mid = spots(sc.size, ((p0 + p1) / 2)[None], np.ones(1), 0.008)
    return bridge + mid


def g_mitotic_spindle(sc: Scene) -> np.ndarray:
    polys = [p for k, c in enumerate(sc.cells) if c.mitotic for p in spindle(sc, k)]
    return lines(sc.size, polys, [0.9] * len(polys), 0.003)


def g_mtoc(sc: Scene) -> np.ndarray:
    pts = np.array([c.centrosome for c in sc.cells])
    e = np.array([c.expression for c in sc.cells])
    rays = []
    for c in sc.cells:
        for th in sc.rng.uniform(0, 2 * np.pi, 8):
            end = c.centrosome + 0.3 * c.body.r * np.array([np.cos(th), np.sin(th)])
            rays.append(np.stack([c.centrosome, end]))
    r = np.mean([c.body.r for c in sc.cells])
    return spots(sc.size, pts, e, 0.05 * r) + lines(sc.size, rays, [0.25] * len(rays), 0.002)


def g_centrosome(sc: Scene) -> np.ndarray:
    pts, e = [], []
    for c in sc.cells:
        th = sc.rng.uniform(0, 2 * np.pi)
        d = 0.035 * c.body.r * np.array([np.cos(th), np.sin(th)])
        pts += [c.centrosome - d, c.centrosome + d]
        e += [c.expression] * 2
    r = np.mean([c.body.r for c in sc.cells])
    return spots(sc.size, np.array(pts), np.array(e), 0.018 * r)


def g_lipid_droplets(sc: Scene) -> np.ndarray:
    ctr, rad, amp = [], [], []
    for k, c in enumerate(sc.cells):
        p = sample_cyto(sc, k, int(sc.rng.integers(4, 12)), rho=(0.0, 0.85))
        ctr.append(p)
        rad.append(sc.rng.uniform(0.04, 0.09, len(p)) * c.body.r)
        amp.append(sc.rng.uniform(0.7, 1.0, len(p)) * c.expression)
    return rings(sc.size, np.concatenate(ctr), np.concatenate(rad), np.concatenate(amp),
                 0.004)


def g_plasma_membrane(sc: Scene) -> np.ndarray:
    f = sc.fields
    edge = _rim(f["dmin"], f["rpx"], 1.3, 0.97)
    between = _rim(f["d2"] - f["dmin"], f["rpx"], 1.3, 0.0) * _soft(f["dmin"] - 1, 0.03)
    return np.maximum(edge, between) * _expression(sc)


def g_cell_junctions(sc: Scene) -> np.ndarray:
    f = sc.fields
    between = _rim(f["d2"] - f["dmin"], f["rpx"], 1.8, 0.0) * _soft(f["d2"] - 1.02, 0.03)
    return between * (0.7 + 0.3 * smooth_noise(sc.rng, 48, sc.size)) * _expression(sc)


def g_mitochondria(sc: Scene) -> np.ndarray:
    polys, amps = [], []
    for k, c in enumerate(sc.cells):
        p = sample_cyto(sc, k, int(sc.rng.integers(40, 80)), rho=(0.0, 0.9), min_dn=1.1)
        th = sc.rng.uniform(0, np.pi, len(p))
        ln = sc.rng.uniform(0.06, 0.15, len(p)) * c.body.r
        d = np.column_stack([np.cos(th), np.sin(th)]) * ln[:, None]
        bend = sc.rng.normal(0, 0.3, len(p)) * ln
        polys += list(_bent(p - d, p + d, bend, np.zeros(len(p)), 5))
        amps += list(sc.rng.uniform(0.6, 1.0, len(p)) * c.expression)
    return lines(sc.size, polys, amps, 0.0045)


def g_aggresome(sc: Scene) -> np.ndarray:
    pts, e, sig = [], [], []
    for c in sc.cells:
        if sc.rng.random() < 0.75:
            p = c.nucleus.point(np.array(1.25), np.array(c.golgi_angle + sc.rng.normal(0, 0.3)))
            pts += [p, p + sc.rng.normal(0, 0.04 * c.body.r, 2)]
            e += [c.expression, 0.6 * c.expression]
            sig.append(c.body.r)
    if not pts:
        return np.zeros((sc.size, sc.size), np.float32)
    blob = spots(sc.size, np.array(pts), np.array(e), 0.1 * float(np.mean(sig)))
    return blob + 0.08 * _cyto_mask(sc)


def g_cytosol(sc: Scene) -> np.ndarray:
    tex = 0.85 + 0.15 * smooth_noise(sc.rng, 20, sc.size)
    return _cyto_mask(sc) * tex * _expression(sc)


def g_cytoplasmic_bodies(sc: Scene) -> np.ndarray:
    return _per_cell_spots(sc, "cyto", (1, 4), 0.07, (0.85, 1.0))


def g_rods_rings(sc: Scene) -> np.ndarray:
    polys, ctr, rad = [], [], []
    for k, c in enumerate(sc.cells):
        p = sample_cyto(sc, k, int(sc.rng.integers(2, 5)), rho=(0.0, 0.85))
        for q in p:
            if sc.rng.random() < 0.5:
                th = sc.rng.uniform(0, np.pi)
                d = 0.13 * c.body.r * np.array([np.cos(th), np.sin(th)])
                polys.append(np.stack([q - d, q + d]))
            else:
                ctr.append(q)
                rad.append(0.07 * c.body.r)
    rods = lines(sc.size, polys, [1.0] * len(polys), 0.009)
    if ctr:
        rods += rings(sc.size, np.array(ctr), np.array(rad), np.ones(len(ctr)), 0.008)
    return rods


GREEN_PATTERNS: tuple[Callable[[Scene], np.ndarray], ...] = (
    g_nucleoplasm, g_nuclear_membrane, g_nucleoli, g_fibrillar_center, g_speckles,
    g_nuclear_bodies, g_er, g_golgi, g_peroxisomes, g_endosomes, g_lysosomes,
    g_intermediate_filaments, g_actin, g_focal_adhesions, g_microtubules,
    g_microtubule_ends, g_cytokinetic_bridge, g_mitotic_spindle, g_mtoc, g_centrosome,
    g_lipid_droplets, g_plasma_membrane, g_cell_junctions, g_mitochondria, g_aggresome,
    g_cytosol, g_cytoplasmic_bodies, g_rods_rings,
)


# ------------------------------------------------------------------ reference stains
def _blue(sc: Scene) -> np.ndarray:
    nuc = _nucleus_mask(sc) * (0.8 + 0.2 * smooth_noise(sc.rng, 28, sc.size))
    blue = nuc * (1 - 0.45 * _nucleoli_layer(sc))
    blue += 0.25 * _rim(sc.fields["dn"], sc.fields["rpx"] * 0.42, 1.5, 0.95) * nuc
    plates = []
    for c in sc.cells:
        if c.mitotic:  # condensed chromosomes: a bright metaphase plate across the spindle
            perp = c.spindle_axis + np.pi / 2
            d = 0.3 * c.body.r * np.array([np.cos(perp), np.sin(perp)])
            ctr = np.array([c.body.cx, c.body.cy])
            plates.append(_bent(ctr - d, ctr + d, 0.02 * c.body.r, 0.5, 8))
    if plates:
        width = 0.16 * float(np.mean([c.body.r for c in sc.cells if c.mitotic]))
        blue += _blur(lines(sc.size, plates, [1.1] * len(plates), width), 0.01 * sc.size)
    return blue


def _red(sc: Scene) -> np.ndarray:
    mt = microtubules(sc)
    red = lines(sc.size, [p for _, p in mt], [0.8] * len(mt), 0.0025)
    polys = [p for k, c in enumerate(sc.cells) if c.mitotic for p in spindle(sc, k)]
    if polys:
        red += lines(sc.size, polys, [1.0] * len(polys), 0.003)
    # Microtubules run over and under the nucleus, out of focus there: dimmer.
    return red * (1 - 0.6 * _nucleus_mask(sc)) + 0.25 * _cyto_mask(sc)


@functools.cache
def _noise_table() -> np.ndarray:
    """2^22 standard normal samples, drawn once per process from a fixed seed."""
    return np.random.default_rng(20180901).standard_normal(1 << 22, dtype=np.float32)


def _pixel_noise(rng: Rng, shape: tuple[int, int]) -> np.ndarray:
    """Gaussian pixel noise: a window of the fixed table at a random offset and sign.

    Drawing 4 x 512^2 fresh normals cost more than rendering the cells (~8 ms per
    stain); a slice of a table is a copy. Deterministic: the offset comes from ``rng``.
    """
    n = shape[0] * shape[1]
    table = _noise_table()
    if n > len(table):
        return rng.standard_normal(shape, dtype=np.float32)
    off = int(rng.integers(0, len(table) - n + 1))
    sign = np.float32(1.0 if rng.random() < 0.5 else -1.0)
    return table[off:off + n].reshape(shape) * sign


def _to_uint8(layer: np.ndarray, rng: Rng, peak: float, background: float,
              read_noise: float) -> np.ndarray:
    """Scale to a dim peak, add a background, shot and read noise; round to uint8."""
    top = max(float(layer.max()), 1e-6)
    img = float(background) + np.clip(layer, 0, None) * np.float32(peak / top)
    noise = _pixel_noise(rng, img.shape)
    img += noise * (float(read_noise) + 0.25 * np.sqrt(img))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)  # +0.5 then truncate: rounding


def render(labels: tuple[int, ...] | list[int], size: int,
           seed: np.random.SeedSequence | int) -> np.ndarray:
    """Render one image whose green pattern shows ``labels``.

    Args:
        labels: class indices (0..27) shown in the green stain.
        size: output side in pixels.
        seed: a SeedSequence (or int) for this image alone, so the result does not depend
            on which worker renders it.

    Returns:
        uint8 array in stain order green, red, blue, yellow.

    Shape:
        (4, size, size)
    """
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    geo_ss, noise_ss = ss.spawn(2)
    rng = np.random.default_rng(geo_ss)
    # Mitosis is drawn for unlabelled images too: red/blue alone must not give class 17 away.
    mitotic = 17 in labels or rng.random() < 0.1
    cells = _make_cells(rng, mitotic)
    sc = Scene(size, cells, rng)
    sc.fields = _fields(cells, size)
    green = np.zeros((size, size), np.float32)
    for lab in sorted(set(labels)):
        layer = GREEN_PATTERNS[lab](sc)
        green += rng.uniform(0.6, 1.0) * layer / max(float(layer.max()), 1e-6)
    stains = [green, _red(sc), _blue(sc), er_field(sc)]
    psf = max(0.7, 0.0015 * size)  # optical blur, a fixed fraction of the field of view
    peaks = [rng.uniform(45, 110), rng.uniform(50, 110), rng.uniform(80, 150),
             rng.uniform(45, 100)]
    backgrounds = rng.uniform(2, 10, 4)
    noise_rng = np.random.default_rng(noise_ss)
    out = np.empty((4, size, size), np.uint8)
    for i, layer in enumerate(stains):
        out[i] = _to_uint8(_blur(layer, psf), noise_rng, peaks[i], backgrounds[i], 1.5)
    return out
