"""The scene under a synthetic HPA image (:mod:`hpatk.core.synth_cells` draws its stains):
cells as wobbly ellipses with a nucleus, nucleoli, a Golgi side and a centrosome, in
normalised image coordinates ([0, 1]^2), their distance fields at the output size,
vectorised drawing primitives (splatted spots, polylines, rings, smooth noise) and
sampling of points inside cells, nuclei and along microtubules.
"""

from __future__ import annotations

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


def make_cells(rng: Rng, mitotic_cell: bool) -> list[_Cell]:
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


def cell_fields(cells: list[_Cell], size: int) -> dict[str, np.ndarray]:
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
def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
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
    return blur(out, s) * np.float32(2 * np.pi * s * s)


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


def soft(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 1 where x < -2 width, 0 where x > 2 width, linear between."""
    return np.clip(0.5 - x * np.float32(0.25 / width), 0, 1, dtype=np.float32)


# ------------------------------------------------------------------ sampling in cells
def owner_of(cells: list[_Cell], pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest cell of each point (m, 2) and the normalised distance to it: (m,), (m,)."""
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
    own, _ = owner_of(sc.cells, pts)
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
    own, d = owner_of(sc.cells, pts)
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


def bent(p0: np.ndarray, p1: np.ndarray, bend: np.ndarray | float,
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
        polys += list(bent(np.broadcast_to(c.centrosome, ends.shape), ends, bends, phases, 16))
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
    fibres = list(bent(np.broadcast_to(a, (n, 2)), np.broadcast_to(b, (n, 2)), w,
                        sc.rng.uniform(-0.05, 0.05, n), 14))
    m = int(sc.rng.integers(6, 12))
    th = sc.rng.uniform(0, 2 * np.pi, m)
    pole = np.where(np.cos(th - c.spindle_axis)[:, None] > 0, b, a)
    ray = 0.2 * c.body.r * np.column_stack([np.cos(th), np.sin(th)])
    return fibres + list(np.stack([pole, pole + ray], axis=1))
