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

import numpy as np
from hpatk.core.synth_scene import (
    Rng,
    Scene,
    bent,
    blur,
    cell_fields,
    clip_polys,
    lines,
    make_cells,
    microtubules,
    owner_of,
    rings,
    sample_cyto,
    sample_nucleus,
    smooth_noise,
    soft,
    spindle,
    spots,
)


# -------------------------------------------------------------- the 28 green patterns
def _nucleus_mask(sc: Scene) -> np.ndarray:
    f = sc.fields
    return soft(f["dn"] - 1.0, 0.04) * soft(f["dmin"] - 1.0, 0.03)


def _cyto_mask(sc: Scene) -> np.ndarray:
    f = sc.fields
    return soft(f["dmin"] - 0.98, 0.03) * (1 - soft(f["dn"] - 1.05, 0.04))


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
    return _rim(f["dn"], f["rpx"] * 0.42, 1.3) * soft(f["dmin"] - 1, 0.03) * _expression(sc)


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
        er += 0.5 * _rim(f["dn"], f["rpx"] * 0.42, 1.5, 1.05) * soft(f["dmin"] - 1, 0.03)
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
        own, _ = owner_of(sc.cells, outer)
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
    bridge = lines(sc.size, [bent(p0, p1, 0.01, 0.3)], [0.9], 0.005)
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
    between = _rim(f["d2"] - f["dmin"], f["rpx"], 1.3, 0.0) * soft(f["dmin"] - 1, 0.03)
    return np.maximum(edge, between) * _expression(sc)


def g_cell_junctions(sc: Scene) -> np.ndarray:
    f = sc.fields
    between = _rim(f["d2"] - f["dmin"], f["rpx"], 1.8, 0.0) * soft(f["d2"] - 1.02, 0.03)
    return between * (0.7 + 0.3 * smooth_noise(sc.rng, 48, sc.size)) * _expression(sc)


def g_mitochondria(sc: Scene) -> np.ndarray:
    polys, amps = [], []
    for k, c in enumerate(sc.cells):
        p = sample_cyto(sc, k, int(sc.rng.integers(40, 80)), rho=(0.0, 0.9), min_dn=1.1)
        th = sc.rng.uniform(0, np.pi, len(p))
        ln = sc.rng.uniform(0.06, 0.15, len(p)) * c.body.r
        d = np.column_stack([np.cos(th), np.sin(th)]) * ln[:, None]
        bend = sc.rng.normal(0, 0.3, len(p)) * ln
        polys += list(bent(p - d, p + d, bend, np.zeros(len(p)), 5))
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
            plates.append(bent(ctr - d, ctr + d, 0.02 * c.body.r, 0.5, 8))
    if plates:
        width = 0.16 * float(np.mean([c.body.r for c in sc.cells if c.mitotic]))
        blue += blur(lines(sc.size, plates, [1.1] * len(plates), width), 0.01 * sc.size)
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
    cells = make_cells(rng, mitotic)
    sc = Scene(size, cells, rng)
    sc.fields = cell_fields(cells, size)
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
        out[i] = _to_uint8(blur(layer, psf), noise_rng, peaks[i], backgrounds[i], 1.5)
    return out
