"""Training one class's DCGAN with the paper's recipe, and what a run writes.

The recipe (Verma et al. 2020, following the Keras-GAN DCGAN template and the "GAN
hacks" it cites):

- images scaled to [-1, 1] (the generator ends in tanh);
- Adam for G (lr 2e-4, beta1 0.5), plain SGD for D (lr configurable; opt-in, not the
  paper: ``d_optimizer="adam"``, Adam for D too, as Radford et al.'s DCGAN);
- separate real and fake mini-batches for D (BatchNorm sees one kind at a time);
- one-sided label smoothing: real targets 0.9, fake targets 0;
- 5% of D's labels flipped (a flipped real gets the fake target and vice versa);
- the minimax objective of Goodfellow et al.; G minimises ``-log D(G(z))`` (the
  non-saturating form recommended in the same paper and used by Keras-GAN, whose
  ``combined.train_on_batch(noise, valid)`` is exactly this) instead of
  ``log(1 - D(G(z)))``, which has no gradient while D wins early in training.

One step = one D update on a real and a fake batch, then one G update (the Keras
template's "epoch"; the paper's "2,000 and 10,000 epochs" are such steps).

A run folder (``out_dir``) holds ``generator.pt`` (generator-only checkpoint),
``last.pt`` (generator + discriminator + optimiser and RNG state, for ``resume``),
``losses.csv`` (step, d_loss_real, d_loss_fake, g_loss, d_acc), ``losses.png``,
``samples_real.png`` and ``samples_step_N.png`` grids (RGB composites of the stains).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hpatk.core.checkpoint import load_checkpoint, save_checkpoint
from hpatk.core.device import resolve_device
from hpatk.core.errors import HpatkError
from hpatk.core.generator import resize_uint8
from hpatk.core.io import atomic_open
from hpatk.core.picture import pyplot, save_figure, save_grid
from hpatk.core.progress import progress
from hpatk.core.version import __version__
from hpatk.plugins.augment_gan.dcgan import DCGAN, from_uint8, to_uint8
from hpatk.plugins.augment_gan.diffaugment import diff_augment, parse_policy

LOSS_COLUMNS = ("step", "d_loss_real", "d_loss_fake", "g_loss", "d_acc")
D_LR = {"sgd": 0.005, "adam": 2e-4}  # the discriminator's optimisers and default rates


@dataclass
class GanTrainConfig:
    """Settings of one DCGAN training run (defaults = the paper where it says).

    Attributes:
        steps: D+G updates (the paper shows samples after 2,000 and 10,000).
        batch_size: images per real (and per fake) mini-batch.
        g_lr, g_beta1: Adam for the generator (Keras-GAN: 2e-4, 0.5).
        d_optimizer: the discriminator's optimiser: "sgd" (the paper) or "adam"
            (Radford et al.'s DCGAN recipe, Adam for both models; not in the paper).
        d_lr: the discriminator's learning rate; None = the optimiser's default,
            :data:`D_LR` (SGD 0.005: the paper gives no rate; 0.005 gave samples closer
            to the real pixel distributions than 0.02 or 0.1 in short CPU runs on the
            synthetic data, 32 px, width 4 and 8. Adam 2e-4, Radford et al.).
        d_momentum: SGD's momentum (sgd only).
        d_beta1: Adam's beta1 for the discriminator (adam only; Radford et al.: 0.5).
        real_label: one-sided label smoothing target for real images.
        flip: fraction of D's labels flipped per batch.
        dropout: the discriminator's dropout (recorded; the model is built with it).
        seed: seeds noise, batch order, label flips, dropout and initial weights.
        device: "cpu", "cuda", "cuda:1", or "auto".
        sample_every: write a sample grid every N steps (and at step 0 and the end);
            0 = only at the end.
        checkpoint_every: write ``last.pt``/``generator.pt``/``losses.csv`` every N steps
            (0 = ``sample_every``); always at the end.
        grid: the sample grid is ``grid x grid`` images from fixed noise.
        diffaugment: DiffAugment ops applied to real and fake images before D
            (``"color,translation,cutout"``; "" = none, the paper). Not in the paper:
            for classes of a few hundred images or fewer (see ``diffaugment.py``).
    """

    steps: int = 10000
    batch_size: int = 32
    g_lr: float = 2e-4
    g_beta1: float = 0.5
    d_optimizer: str = "sgd"
    d_lr: float | None = None
    d_momentum: float = 0.0
    d_beta1: float = 0.5
    real_label: float = 0.9
    flip: float = 0.05
    dropout: float = 0.25
    seed: int = 0
    device: str = "auto"
    sample_every: int = 1000
    checkpoint_every: int = 0
    grid: int = 4
    diffaugment: str = ""

    def __post_init__(self) -> None:
        if self.d_optimizer not in D_LR:
            raise HpatkError(f"d_optimizer must be one of {', '.join(D_LR)}, got "
                             f"'{self.d_optimizer}'")
        if self.d_lr is None:
            self.d_lr = D_LR[self.d_optimizer]
        try:
            parse_policy(self.diffaugment)
        except ValueError as exc:
            raise HpatkError(str(exc)) from None
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 2, "batch size must be >= 2 (BatchNorm needs a batch)"),
            (self.g_lr > 0 and self.d_lr > 0, "learning rates must be > 0"),
            (0 <= self.flip < 0.5, "flip must be in [0, 0.5)"),
            (0.5 < self.real_label <= 1, "real_label must be in (0.5, 1]"),
            (self.sample_every >= 0 and self.checkpoint_every >= 0,
             "sample/checkpoint intervals must be >= 0"),
            (self.grid >= 1, "grid must be >= 1"),
            (0 <= self.g_beta1 < 1 and 0 <= self.d_beta1 < 1, "beta1 must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise HpatkError(message)


@dataclass
class TrainResult:
    """What :func:`train_gan` returns: per-step losses and the files it wrote."""

    history: list[dict[str, float]]
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)


class ImageBank:
    """One class's real images as uint8 at the GAN's size, in memory or read on demand.

    Args:
        images: uint8 (N, C, H, W) array/tensor, resized here to ``size`` if needed; or
        reader: ``reader(rows int64 array) -> uint8 (B, C, H, W)`` over ``n`` rows,
            streamed and resized per batch (for classes too big for memory).
        size: the GAN's image size.
    """

    def __init__(self, images: Any = None, *, size: int,
                 reader: Callable[[np.ndarray], Any] | None = None, n: int | None = None) -> None:
        self.size = int(size)
        self.reader = reader
        self.images: torch.Tensor | None = None
        if reader is None:
            t = torch.as_tensor(np.asarray(images))
            if t.dtype != torch.uint8 or t.ndim != 4:
                raise HpatkError(f"GAN training images must be uint8 (N, C, H, W), got "
                                 f"{t.dtype} {tuple(t.shape)}")
            self.n, self.channels = len(t), int(t.shape[1])
            if self.n:
                self.images = torch.cat([resize_uint8(t[i:i + 256], self.size)
                                         for i in range(0, self.n, 256)])
        else:
            self.n = int(n or 0)
            self.channels = int(self.batch(torch.zeros(1, dtype=torch.int64)).shape[1]) \
                if self.n else 0
        if self.n == 0:
            raise HpatkError("no images to train the GAN on")

    def __len__(self) -> int:
        return self.n

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, size, size) on the CPU for the row numbers in ``index``."""
        if self.images is not None:
            return self.images[index]
        assert self.reader is not None
        rows = torch.as_tensor(np.asarray(self.reader(np.asarray(index, dtype=np.int64))))
        return resize_uint8(rows, self.size)

    def take(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` images (a deterministic choice without replacement)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n, generator=g)[:n].sort().values
        return self.batch(idx)


# --- pictures -------------------------------------------------------------------------

def plot_losses(history: Sequence[dict[str, float]], path: str | os.PathLike[str],
                title: str = "") -> Path:
    """D and G losses (moving average) and D's accuracy against the step, as a PNG."""
    plt = pyplot()

    steps = np.array([h["step"] for h in history])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    win = max(1, len(steps) // 100)
    kernel = np.ones(win) / win
    for key in ("d_loss_real", "d_loss_fake", "g_loss"):
        y = np.array([h[key] for h in history])
        ax.plot(steps[win - 1:], np.convolve(y, kernel, mode="valid"), label=key)
    ax.set_ylabel("BCE loss")
    ax.legend(fontsize=8)
    ax.set_title(title or "DCGAN losses", fontsize=9)
    ax2.plot(steps[win - 1:], np.convolve([h["d_acc"] for h in history], kernel, "valid"),
             color="k")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("D accuracy")
    ax2.set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_losses_csv(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """``step,d_loss_real,d_loss_fake,g_loss,d_acc`` one row per step, atomically."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LOSS_COLUMNS)
        for h in history:
            w.writerow([int(h["step"])] + [f"{h[k]:.6g}" for k in LOSS_COLUMNS[1:]])
    return Path(path)


# --- checkpoints ----------------------------------------------------------------------

def generator_checkpoint(gan: DCGAN, cfg: GanTrainConfig, step: int,
                         meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator checkpoint (kind "generator", see hpatk.core.checkpoint).

    ``model`` is exactly the ``dcgan`` factory's keyword arguments.
    """
    meta = dict(meta or {})
    return {
        "kind": "state", "format": 1, "hpatk_version": __version__,
        "model": gan.config(),
        "state_dict": {k: v.detach().cpu() for k, v in gan.generator.state_dict().items()},
        "class_index": meta.pop("class_index", None),
        "class_name": meta.pop("class_name", None),
        "stains": list(meta.pop("stains", [])),
        "enhance": meta.pop("enhance", None),
        "fold": meta.pop("fold", None),
        "seed": cfg.seed, "steps": int(step),
        "config": asdict(cfg),
        **meta,
    }


def _rng_state(device: torch.device, data_rng: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _history_tensor(history: Sequence[dict[str, float]]) -> torch.Tensor:
    return torch.tensor([[h[k] for k in LOSS_COLUMNS] for h in history],
                        dtype=torch.float64).reshape(-1, len(LOSS_COLUMNS))


def _history_list(t: torch.Tensor) -> list[dict[str, float]]:
    return [{k: (int(v) if k == "step" else float(v))
             for k, v in zip(LOSS_COLUMNS, row, strict=True)} for row in t.tolist()]


# --- the loop -------------------------------------------------------------------------

def train_gan(gan: DCGAN, images: Any, cfg: GanTrainConfig | None = None, *,
              out_dir: str | os.PathLike[str] | None = None,
              meta: dict[str, Any] | None = None, resume: bool = False,
              desc: str = "gan", labels: Any = None) -> TrainResult:
    """Train ``gan`` on one class's images with the paper's recipe.

    Args:
        gan: the :class:`DCGAN` (trained in place; on return its models are on the device).
        images: an :class:`ImageBank` or uint8 images (N, C, H, W) of ONE class (resized
            to ``gan``'s size if they differ).
        cfg: the settings; defaults = the paper.
        out_dir: where to write checkpoints, ``losses.csv``, plots and sample grids
            (nothing is written when None).
        meta: provenance stored in the checkpoints: ``class_index``, ``class_name``,
            ``stains``, ``enhance``, ``fold``, and anything else (plain data).
        resume: continue from ``out_dir/last.pt`` when it exists.
        desc: the progress bar's label ("" = no progress output).
        labels: for a conditional ``gan`` (``gan.conditional``): the images' label
            vectors, (N, K); fake batches get labels drawn from them.

    Returns:
        a :class:`TrainResult` with one dict per step
        (``step, d_loss_real, d_loss_fake, g_loss, d_acc``).

    Raises:
        HpatkError: bad settings, images of the wrong channel count, a non-finite loss
            (the last good checkpoint stays), or a ``last.pt`` that does not match.
    """
    cfg = cfg or GanTrainConfig()
    G, D = gan.generator, gan.discriminator
    bank = images if isinstance(images, ImageBank) else ImageBank(images, size=G.image_size)
    if bank.channels != G.channels:
        raise HpatkError(f"the GAN has {G.channels} channels but the images have "
                         f"{bank.channels}")
    cond = bool(getattr(gan, "conditional", False))
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.float32) if cond else None
    if cond and (y_all is None or y_all.ndim != 2 or len(y_all) != len(bank)):
        raise HpatkError(f"a conditional GAN needs (N, K) labels for its {len(bank)} images")
    device = resolve_device(cfg.device)
    meta = dict(meta or {})
    stains = list(meta.get("stains") or [])
    out = Path(out_dir) if out_dir is not None else None

    torch.manual_seed(cfg.seed)  # dropout; the weights were drawn when gan was built
    data_rng = torch.Generator().manual_seed(cfg.seed)
    G.to(device).train()
    D.to(device).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=(cfg.g_beta1, 0.999))
    opt_d = _d_optimizer(D, cfg)
    bce = torch.nn.BCEWithLogitsLoss()
    history: list[dict[str, float]] = []
    start = 0
    files: list[Path] = []

    if resume and out is not None and (out / "last.pt").is_file():
        start, history, rng = _restore(gan, cfg, opt_g, opt_d, data_rng, out / "last.pt")
        if start >= cfg.steps:
            return TrainResult(history[:cfg.steps], out, files)
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)

    # Fixed noise for the sample grids, independent of the training RNG.
    grid_rng = torch.Generator().manual_seed(cfg.seed + 7919)
    z_grid = torch.randn(cfg.grid ** 2, G.latent_dim, generator=grid_rng)
    if y_all is not None:  # fixed label vectors for the grids, drawn from the real ones
        z_grid = (z_grid, y_all[torch.randint(0, len(y_all), (cfg.grid ** 2,),
                                              generator=grid_rng)])
    title = meta.get("class_name") or desc
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if start == 0:
            files.append(save_grid(bank.take(cfg.grid ** 2, cfg.seed), stains,
                                   out / "samples_real.png", title=f"{title}: real images"))
            files.append(_grid(G, z_grid, stains, out, 0, title, device))

    ops = parse_policy(cfg.diffaugment)

    def disc(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if ops:  # the same kind of augmentation for real and fake, in D's and G's step
            x = diff_augment(x, ops)
        return D(x, y) if cond else D(x)

    ckpt_every = cfg.checkpoint_every or cfg.sample_every
    B = cfg.batch_size
    ones = torch.ones(B, 1, device=device)
    last_good = start
    steps = range(start, cfg.steps)
    for step in (progress(steps, desc=desc, total=cfg.steps - start, unit="step")
                 if desc else steps):
        idx = torch.randint(0, len(bank), (B,), generator=data_rng)
        z = torch.randn(B, G.latent_dim, generator=data_rng)
        flips = torch.rand(2, B, 1, generator=data_rng) < cfg.flip
        real = from_uint8(bank.batch(idx).to(device, non_blocking=True))
        z, flips = z.to(device), flips.to(device)
        y_real = y_fake = None
        if y_all is not None:
            y_real = y_all[idx].to(device)
            y_fake = y_all[torch.randint(0, len(y_all), (B,), generator=data_rng)].to(device)
        t_real = torch.where(flips[0], 0.0, cfg.real_label).to(real.dtype)
        t_fake = torch.where(flips[1], cfg.real_label, 0.0).to(real.dtype)

        fake = G(z, y_fake) if cond else G(z)
        # D: a real and a fake mini-batch, separately (BatchNorm sees one kind at a time).
        D.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        logit_real = disc(real, y_real)
        loss_real = bce(logit_real, t_real)
        loss_real.backward()
        logit_fake = disc(fake.detach(), y_fake)
        loss_fake = bce(logit_fake, t_fake)
        loss_fake.backward()
        opt_d.step()
        # G: non-saturating minimax, -log D(G(z)); D's weights get no gradient here.
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        loss_g = bce(disc(fake, y_fake), ones)
        loss_g.backward()
        opt_g.step()

        acc = ((logit_real > 0).float().mean() + (logit_fake < 0).float().mean()) / 2
        row = torch.stack([loss_real.detach(), loss_fake.detach(), loss_g.detach(),
                           acc]).tolist()
        done = step + 1
        if not all(math.isfinite(v) for v in row[:3]):
            where = f"; the last good checkpoint ({out / 'last.pt'}, step {last_good}) is kept" \
                if out is not None and last_good > 0 else ""
            raise HpatkError(f"{desc}: non-finite loss at step {done} (d_real {row[0]:.3g}, "
                             f"d_fake {row[1]:.3g}, g {row[2]:.3g}); try a smaller d_lr{where}")
        history.append(dict(zip(LOSS_COLUMNS, [done, *row], strict=True)))
        if out is not None:
            if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                files.append(_grid(G, z_grid, stains, out, done, title, device))
            if ckpt_every and done % ckpt_every == 0 and done != cfg.steps:
                _write_state(gan, cfg, done, meta, history, opt_g, opt_d, data_rng, device,
                             out)
                last_good = done
    D.requires_grad_(True)

    if out is not None:
        files.append(_grid(G, z_grid, stains, out, cfg.steps, title, device))
        files += _write_state(gan, cfg, cfg.steps, meta, history, opt_g, opt_d, data_rng,
                              device, out)
        files.append(plot_losses(history, out / "losses.png", title=f"{title}: DCGAN losses"))
    return TrainResult(history, out, files)


def _d_optimizer(D: torch.nn.Module, cfg: GanTrainConfig) -> torch.optim.Optimizer:
    """The discriminator's optimiser, as ``cfg.d_optimizer`` says."""
    if cfg.d_optimizer == "adam":
        return torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=(cfg.d_beta1, 0.999))
    return torch.optim.SGD(D.parameters(), lr=cfg.d_lr, momentum=cfg.d_momentum)


def _grid(G: torch.nn.Module, z: Any, stains: Sequence[str], out: Path, step: int,
          title: str, device: torch.device) -> Path:
    was = G.training
    G.eval()  # BatchNorm running statistics, as Keras' predict
    with torch.no_grad():
        args = z if isinstance(z, tuple) else (z,)
        imgs = to_uint8(G(*(a.to(device) for a in args))).cpu()
    G.train(was)
    return save_grid(imgs, stains, out / f"samples_step_{step}.png",
                     title=f"{title}: step {step}")


def _write_state(gan: DCGAN, cfg: GanTrainConfig, step: int, meta: dict[str, Any],
                 history: list[dict[str, float]], opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, data_rng: torch.Generator,
                 device: torch.device, out: Path) -> list[Path]:
    full = generator_checkpoint(gan, cfg, step, meta)
    full.update({
        "discriminator": {k: v.detach().cpu() for k, v in gan.discriminator.state_dict().items()},
        "optim_g": opt_g.state_dict(), "optim_d": opt_d.state_dict(),
        "rng": _rng_state(device, data_rng),
        "history": _history_tensor(history),
    })
    return [save_checkpoint(full, out / "last.pt"), write_losses_csv(history, out / "losses.csv")]


def _restore(gan: DCGAN, cfg: GanTrainConfig, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, data_rng: torch.Generator,
             path: Path) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("model") != gan.config():
        raise HpatkError(f"cannot resume from '{path}': it holds a DCGAN {ckpt.get('model')}, "
                         f"this run builds {gan.config()}")
    was = (ckpt.get("config") or {}).get("d_optimizer", "sgd")
    if was != cfg.d_optimizer:
        raise HpatkError(f"cannot resume from '{path}': its discriminator trained with "
                         f"d_optimizer={was}, this run asks for {cfg.d_optimizer}")
    try:
        gan.generator.load_state_dict(ckpt["state_dict"])
        gan.discriminator.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["optim_g"])
        opt_d.load_state_dict(ckpt["optim_d"])
        data_rng.set_state(ckpt["rng"]["data"])
        return int(ckpt["steps"]), _history_list(ckpt["history"]), ckpt["rng"]
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise HpatkError(f"cannot resume from '{path}': {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def config_fields() -> list[str]:
    """The names :class:`GanTrainConfig` accepts."""
    return [f.name for f in fields(GanTrainConfig)]
