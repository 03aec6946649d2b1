"""The training engine: the paper's recipe as a resumable loop writing a run folder.

``train(cfg)`` trains one fold (or every fold in turn with ``fold="all"``): Adam,
``lr = lr0 * exp(-lr_decay * epoch)``, a batch size doubled every N epochs, a registered
loss (focal by default), classic augmentation batch-wise on the device, AMP and
channels_last on CUDA. Each epoch writes ``metrics.csv``, ``last.pt`` and whichever of
``best_loss.pt`` / ``best_macro_f1.pt`` / ``best_micro_f1.pt`` improved; at the end,
thresholds are tuned on the validation fold with the best macro-F1 model and
``report.md`` is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hpatk.core import distributed as ddp
from hpatk.core.batching import (
    BatchPrep,
    EpochBatchSampler,
    channel_stats,
    infer,
    make_loader,
)
from hpatk.core.checkpoint import load_checkpoint, save_checkpoint
from hpatk.core.classes import CLASS_NAMES
from hpatk.core.device import amp_setup, resolve_device
from hpatk.core.errors import HpatkError
from hpatk.core.io import make_dirs, remove_stale_temps, writer_lock
from hpatk.core.metrics import classification_metrics, describe_macro_f1, predicted_metrics
from hpatk.core.progress import progress
from hpatk.core.registry import get_registry
from hpatk.core.run import (
    BEST,
    FoldResult,
    rng_state,
    seed_everything,
    set_rng_state,
    write_fold_summary,
    write_metrics,
    write_thresholds,
)
from hpatk.core.train_config import RESUME_SAFE, TrainConfig, write_config
from hpatk.core.train_objects import (
    build_augment,
    build_loss,
    build_model,
    check_objects,
    state_dict_cpu,
)
from hpatk.core.version import __version__
from torch import nn


class TrainingDiverged(HpatkError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# -- small pieces the benchmark and tests reuse -------------------------------------------
def train_epoch(model: nn.Module, loader: Any, prep: BatchPrep, loss_fn: nn.Module,
                optimizer: torch.optim.Optimizer, *, scaler: Any = None,
                amp_dtype: torch.dtype | None = None, desc: str = "",
                check_every: int | None = None) -> float:
    """One pass over ``loader``; returns the mean training loss per sample.

    The loss is summed on the device and checked for NaN/inf every ``check_every``
    steps (1 on CPU; on CUDA less often, to avoid a sync per step).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    device = prep.device
    check_every = check_every or (1 if device.type == "cpu" else 25)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    it = progress(loader, desc=desc, unit="batch") if desc else loader
    for step, (images, targets) in enumerate(it, 1):
        x = prep(images, train=True)
        y = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        n += len(y)
        if step % check_every == 0:
            _check_finite(loss_sum, f" at step {step}")
    _check_finite(loss_sum, "")
    total, count = ddp.all_sum([float(loss_sum), n])  # over every rank's samples
    return total / max(count, 1)


def _check_finite(loss_sum: torch.Tensor, where: str) -> None:
    """Raise TrainingDiverged if the loss sum is NaN/inf on this rank or any other (all
    ranks stop at the same step; rank 0 says which rank diverged)."""
    bad = ddp.agree(bool(torch.isfinite(loss_sum)))
    if not bad:
        return
    if not ddp.current().enabled:
        raise TrainingDiverged(f"training loss is {float(loss_sum)}{where}")
    raise _diverged(f"training loss is not finite on rank {', '.join(map(str, bad))}{where}")


def _diverged(message: str) -> HpatkError:
    """TrainingDiverged on rank 0; the other ranks stop without repeating it."""
    return TrainingDiverged(message) if ddp.is_main() else ddp.StoppedByPeer(message)


# -- the run -----------------------------------------------------------------------------
@dataclass
class PreparedRun:
    """What :func:`prepare_run` checked and resolved: the settings as ``config.yaml``
    records them, the data plan, and provenance for ``config.yaml``'s ``_info``."""

    cfg: TrainConfig
    plan: Any
    info: dict[str, Any]
    resume: bool


def prepare_run(cfg: TrainConfig, *, resume: bool = False,
                overrides: dict[str, Any] | None = None) -> PreparedRun:
    """Everything that can fail on the user's settings, done before the run folder is
    written: the run folder's state, registered names, the loss and augmentation built
    with their parameters, the cache opened (built for a dataset folder) and the folds,
    the backbone built (with ``--pretrained``) and one tiny batch run through
    augmentation, model and loss (which also checks the backbone's minimum input size).

    ``cfg`` is validated already (:class:`TrainConfig` checks every setting when built).
    Under DDP, ranks other than 0 run it after rank 0 wrote the run's ``folds.csv``,
    and read it.

    Raises:
        HpatkError: one line naming the option or config key at fault.
    """
    from hpatk.core.train_data import plan_data

    out = Path(cfg.out)
    if not cfg.out:
        raise HpatkError("--out is required (the run folder)")
    if resume:
        cfg = _resume_config(cfg, out, overrides or {})
    elif ddp.is_main():
        _check_fresh_out(out)
    reg = get_registry()  # unknown names fail before anything is built
    reg.backbones.get(cfg.backbone)
    reg.losses.get(cfg.loss)
    from hpatk.core.generator import build_synthesizer
    from hpatk.core.synthetic import resolve_aug

    choice = resolve_aug(cfg.aug, cfg.aug_params, cfg.batch_aug)
    loss_fn = build_loss(cfg)
    augment = build_augment(cfg)
    if choice.synth is not None:
        build_synthesizer(choice.synth, choice.synth_params)
    folds_csv = out / "folds.csv"
    plan = plan_data(cfg, folds_csv if (resume or not ddp.is_main()) and folds_csv.exists()
                     else None)
    # record what the cache decided (size, enhancement, stains): the replayable settings
    size_from = f"{cfg.where('size')} {cfg.size}" if cfg.size else f"cache '{plan.path}'"
    cfg = cfg.replace(size=plan.size, enhance=str(plan.enhance.get("name")),
                      enhance_params={k: v for k, v in plan.enhance.items() if k != "name"},
                      in_stains=list(plan.stains))
    ddp.check_divides(sorted({cfg.batch_size_at(e) for e in range(cfg.epochs)}))
    ddp.check_sync_bn(cfg.sync_bn, resolve_device(cfg.device))
    model, _ = build_model(cfg, len(plan.classes), len(plan.stains),
                           pretrained=None if resume else cfg.pretrained)
    check_objects(cfg, model, loss_fn, augment, in_chans=len(plan.stains),
                  num_classes=len(plan.classes), size=plan.size, size_from=size_from)
    info = {"hpatk_version": __version__, "cache": str(plan.path),
            "cache_fingerprint": str(plan.meta.get("fingerprint", "")),
            "images": int(len(plan.rows))}
    return PreparedRun(cfg, plan, info, resume)


def _has_checkpoint(out: Path) -> bool:
    """A run folder with a ``last.pt`` (its own, or a fold's with ``--fold all``)."""
    return (out / "last.pt").exists() or any(out.glob("fold_*/last.pt"))


def _check_fresh_out(out: Path) -> None:
    """Refuse a folder holding a run; say so when it holds one that never checkpointed."""
    if _has_checkpoint(out):
        raise HpatkError(f"--out '{out}' already holds a run; pass --resume to continue it "
                         f"or choose another folder")
    if (out / "config.yaml").exists():
        print(f"hpatk: --out '{out}' holds a run that stopped before its first checkpoint "
              f"(no last.pt); starting it over", file=sys.stderr)


def train(cfg: TrainConfig, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> list[FoldResult]:
    """Train ``cfg`` into ``cfg.out`` (one fold, or ``RUN/fold_K`` for each fold).

    :func:`prepare_run` checks and builds everything first; nothing is written to the
    run folder before it succeeds. Rank 0 (the only process without DDP) then holds the
    run folder's lock, removes temporaries a killed run left, and writes ``config.yaml``
    and ``folds.csv``.

    Args:
        resume: continue from ``last.pt`` (each fold's, with ``fold="all"``).
        overrides: settings given explicitly alongside ``resume``; only ``RESUME_SAFE``
            ones may differ from the run's ``config.yaml``.
    """
    from hpatk.core.train_data import write_run_folds

    with contextlib.ExitStack() as lock:
        with ddp.main_first("preparing the run"):  # rank 0 builds the cache, writes folds
            prep = prepare_run(cfg, resume=resume, overrides=overrides)
            cfg, plan, info = prep.cfg, prep.plan, prep.info
            out = Path(cfg.out)
            if ddp.is_main():
                make_dirs(out)
                lock.enter_context(writer_lock(out / "run", wait=False, what="hpatk train",
                                               remove=True))
                # temporaries of a run killed while writing a checkpoint (we hold the lock)
                remove_stale_temps(sorted([*out.glob(".*.tmp"), *out.glob("fold_*/.*.tmp")]))
                write_config(cfg, out / "config.yaml", extra=info)
                write_run_folds(plan, out / "folds.csv")
        results = []
        for fold in cfg.fold_list():
            fold_dir = out / f"fold_{fold}" if cfg.fold == "all" else out
            fold_resume = resume and (fold_dir / "last.pt").exists()
            if cfg.fold == "all" and ddp.is_main():
                if resume and not fold_resume:
                    print(f"fold {fold}: no last.pt in '{fold_dir}'; starting it from epoch 1",
                          file=sys.stderr)
                write_config(cfg.replace(fold=fold, out=str(fold_dir)),
                             fold_dir / "config.yaml", extra=info)
            results.append(_train_fold(cfg, plan, fold, fold_dir, resume=fold_resume))
        if cfg.fold == "all" and ddp.is_main():
            from hpatk.core.oof import write_oof

            write_fold_summary(out, results, write_oof(out, plan, results, cfg))
        return results


def _resume_config(cfg: TrainConfig, out: Path, overrides: dict[str, Any]) -> TrainConfig:
    from hpatk.core.train_config import read_config

    if not (out / "config.yaml").exists():
        raise HpatkError(f"--resume: '{out}' has no config.yaml; nothing to resume")
    if not _has_checkpoint(out):
        raise HpatkError(f"--resume: '{out}' has no last.pt (the run stopped before its first "
                         f"epoch ended); run it again without --resume to start it over")
    saved = read_config(out / "config.yaml")
    for key, value in overrides.items():
        if key not in RESUME_SAFE and getattr(saved, key) != value:
            raise HpatkError(f"--resume: --{key.replace('_', '-')} {value} differs from the "
                             f"run's {getattr(saved, key)}; drop it or start a new --out")
    safe = {k: v for k, v in overrides.items() if k in RESUME_SAFE}
    return saved.replace(**{**safe, "out": str(out)})


class _Fold:
    """State of one fold's training; methods are the steps of :func:`_train_fold`."""

    def __init__(self, cfg: TrainConfig, plan: Any, fold: int, run_dir: Path) -> None:
        self.cfg, self.plan, self.fold, self.run_dir = cfg, plan, fold, run_dir
        self.device = ddp.rank_device(resolve_device(cfg.device))
        self.amp_dtype, self.scaler = amp_setup(self.device, cfg.amp)
        self.classes = list(plan.classes)
        self.n_synthetic = 0
        self.class_names = [CLASS_NAMES[c] for c in self.classes]

    def checkpoint(self, model: nn.Module, epoch: int, metrics: dict[str, float],
                   thresholds: list[float] | None = None) -> dict[str, Any]:
        return {"kind": "classifier", "format": 1, "hpatk_version": __version__,
                "model": self.spec, "state_dict": state_dict_cpu(model),
                "classes": self.classes, "class_names": self.class_names,
                "stains": list(self.plan.stains), "size": int(self.plan.size),
                "enhance": dict(self.plan.enhance), "normalize": self.normalize,
                "thresholds": thresholds, "epoch": int(epoch), "metrics": dict(metrics),
                "fold": self.fold, "config": self.cfg.replace(fold=self.fold).to_dict()}


def _train_fold(cfg: TrainConfig, plan: Any, fold: int, run_dir: Path, *,
                resume: bool) -> FoldResult:
    """One fold, as named steps: synthetic images, datasets, model, optimiser, loaders,
    the resumed state, the epochs, then thresholds and report (:func:`_finish`)."""
    from hpatk.core.synthetic import resolve_aug
    from hpatk.core.train_data import fold_datasets

    st = _Fold(cfg, plan, fold, run_dir)
    choice = resolve_aug(cfg.aug, cfg.aug_params, cfg.batch_aug)
    syn_rows = None
    if choice.synth is not None:  # before seeding: fitting generators draws random numbers
        syn_rows = _synthetic_rows(cfg, plan, fold, run_dir, choice)
    seed_everything(cfg.seed)
    train_ds, val_ds, st.n_synthetic = fold_datasets(plan, fold, synthetic_rows=syn_rows)
    last = load_checkpoint(run_dir / "last.pt") if resume else None
    model = _model(st, train_ds, last)
    net = ddp.wrap_model(model, st.device, sync_bn=cfg.sync_bn)  # model itself in one process
    loss_fn = build_loss(cfg).to(st.device)
    prep = BatchPrep(st.normalize["mean"], st.normalize["std"], stain_index=plan.stain_index,
                     device=st.device, augment=build_augment(cfg),
                     channels_last=cfg.channels_last and st.device.type == "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay = cfg.lr_decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: math.exp(-decay * e))
    workers = _workers(cfg, st.device)
    train_sampler, train_loader, val_loader = _loaders(st, train_ds, val_ds, workers)
    rows, best, start = _restore(st, last, model, optimizer, scheduler)
    if start == 0 and ddp.is_main():
        world = ddp.current().world_size
        print(f"fold {fold}: {len(train_ds)} training images"
              f"{f' ({st.n_synthetic} synthetic)' if st.n_synthetic else ''}, "
              f"{len(val_ds)} validation, {len(st.classes)} classes, {cfg.backbone} on "
              f"{st.device}{f' x {world} processes' if world > 1 else ''}", file=sys.stderr)
    for epoch in range(start, cfg.epochs):
        t0 = time.monotonic()
        bs = cfg.batch_size_at(epoch)
        train_sampler.set_epoch(epoch, bs)
        lr = optimizer.param_groups[0]["lr"]
        desc = f"fold {fold}: epoch {epoch + 1}/{cfg.epochs}"
        try:
            train_loss = train_epoch(net, train_loader, prep, loss_fn, optimizer,
                                     scaler=st.scaler, amp_dtype=st.amp_dtype, desc=desc)
        except TrainingDiverged as exc:
            kept = (f"the last good checkpoint is '{run_dir / 'last.pt'}' (epoch {epoch})"
                    if rows else "no checkpoint was written")
            raise TrainingDiverged(f"{desc}: {exc}; run stopped, {kept}") from None
        scheduler.step()
        ddp.sync_buffers(model)  # rank 0's BatchNorm statistics: the checkpoint's
        row, m = _validate(st, model, val_loader, prep, loss_fn, desc)
        row = {"epoch": epoch + 1, "lr": float(lr), "batch_size": bs,
               "train_loss": train_loss, **row, "time": time.monotonic() - t0}
        rows.append(row)
        _save_epoch(st, model, optimizer, scheduler, row, rows, best)
        if ddp.is_main():
            print(f"{desc}: loss {train_loss:.4f} val_loss {row['val_loss']:.4f} "
                  f"{describe_macro_f1(m)}, micro F1 {row['val_micro_f1']:.4f} "
                  f"acc {row['val_accuracy']:.4f} ({row['time']:.0f}s)", file=sys.stderr)
    del train_loader, val_loader
    return _finish(st, rows, best, val_ds, prep, workers)


def _model(st: _Fold, train_ds: Any, last: dict[str, Any] | None) -> nn.Module:
    """The backbone on the device, and the normalisation: the checkpoint's when resuming,
    else the real training images' channel statistics."""
    cfg, plan = st.cfg, st.plan
    model, st.spec = build_model(cfg, len(st.classes), len(plan.stains),
                                 pretrained=None if last else cfg.pretrained)
    if last is not None:
        st.normalize = last["normalize"]
    else:
        real = train_ds.datasets[0] if st.n_synthetic else train_ds
        mean, std = channel_stats(real, stain_index=plan.stain_index)
        st.normalize = {"mean": mean, "std": std}
    model.to(st.device)
    if cfg.channels_last and st.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def _loaders(st: _Fold, train_ds: Any, val_ds: Any, workers: int) -> tuple[Any, Any, Any]:
    """(training sampler, training loader, validation loader): whole batches, sharded
    over the processes under DDP."""
    cfg = st.cfg
    rank, world = ddp.current().rank, ddp.current().world_size
    pin = st.device.type == "cuda"
    if world > 1 and len(train_ds) < 2 * world:
        raise HpatkError(f"fold {st.fold}: {len(train_ds)} training images are too few for "
                         f"{world} processes (each needs 2 per step)")
    train_sampler = EpochBatchSampler(len(train_ds), cfg.batch_size_at(0), seed=cfg.seed,
                                      rank=rank, world_size=world)
    train_loader = make_loader(train_ds, train_sampler, workers=workers, pin_memory=pin,
                               seed=cfg.seed)
    val_sampler = EpochBatchSampler(len(val_ds), max(cfg.max_batch_size, cfg.batch_size),
                                    shuffle=False, rank=rank, world_size=world)
    val_loader = make_loader(val_ds, val_sampler, workers=workers, pin_memory=pin, seed=cfg.seed)
    return train_sampler, train_loader, val_loader


def _restore(st: _Fold, last: dict[str, Any] | None, model: nn.Module, optimizer: Any,
             scheduler: Any) -> tuple[list[dict[str, float]], dict[str, dict[str, Any]], int]:
    """(metric rows, best checkpoints' metrics, first epoch): from ``last.pt`` when
    resuming (weights, optimiser, scheduler, scaler and RNG state too), else empty."""
    cfg = st.cfg
    rank, world = ddp.current().rank, ddp.current().world_size
    best: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, float]] = []
    start = 0
    if last is not None:
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        if st.scaler is not None and last.get("scaler"):
            st.scaler.load_state_dict(last["scaler"])
        rngs = last.get("rng_ranks") or [last["rng"]]
        set_rng_state(rngs[rank] if len(rngs) == world else last["rng"])
        best = {k: dict(v) for k, v in last["best"].items()}
        rows = [dict(r) for r in last["history"]]
        start = int(last["epoch"])
        if last["batch_size"] != cfg.batch_size_at(start - 1):
            raise HpatkError(f"--resume: last.pt batch size {last['batch_size']} does not "
                             f"match the schedule; the run's config.yaml was edited")
    elif world > 1:
        seed_everything(ddp.rank_seed(cfg.seed))  # augmentation draws of its own per rank
    if ddp.is_main():
        write_metrics(st.run_dir / "metrics.csv", rows)  # drops rows of an unfinished epoch
    return rows, best, start


def _validate(st: _Fold, model: nn.Module, val_loader: Any, prep: BatchPrep,
              loss_fn: nn.Module, desc: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The epoch's validation columns of ``metrics.csv`` and the metrics behind them."""
    res = infer(model, val_loader, prep, loss_fn=loss_fn, amp_dtype=st.amp_dtype,
                gather=True)
    if res.loss is None or not math.isfinite(res.loss):
        raise _diverged(f"{desc}: validation loss is {res.loss}; run stopped, "
                        f"the last good checkpoint is kept")
    m = classification_metrics(res.targets, res.probs)
    return {"val_loss": float(res.loss), "val_macro_f1": m["macro_f1"],
            "val_micro_f1": m["micro_f1"], "val_accuracy": m["accuracy"],
            "val_paper_macro_f1": m["paper_macro_f1"], "val_macro_f1_all": m["macro_f1_all"],
            "val_classes_present": m["classes_present"]}, m


def _save_epoch(st: _Fold, model: nn.Module, optimizer: Any, scheduler: Any,
                row: dict[str, float], rows: list[dict[str, float]],
                best: dict[str, dict[str, Any]]) -> None:
    """Whichever ``best_*.pt`` improved, ``last.pt`` (everything a resume needs, every
    rank's RNG state) and ``metrics.csv``; rank 0 writes."""
    epoch, bs = int(row["epoch"]), int(row["batch_size"])
    metrics = {k: v for k, v in row.items() if k.startswith(("val_", "train_"))}
    ckpt = None
    rngs = ddp.all_objects(rng_state())  # every rank's, for an exact resume
    for name, (key, larger) in BEST.items():
        prev = best.get(name, {}).get(key)
        if prev is None or (row[key] > prev if larger else row[key] < prev):
            best[name] = {"epoch": epoch, **metrics}
            if ddp.is_main():
                ckpt = ckpt or st.checkpoint(model, epoch, metrics)
                save_checkpoint(ckpt, st.run_dir / f"{name}.pt")
    if not ddp.is_main():
        return
    full = st.checkpoint(model, epoch, metrics)
    full.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=st.scaler.state_dict() if st.scaler is not None else None,
                rng=rngs[0], batch_size=bs, best=best, history=rows,
                **({"rng_ranks": rngs} if ddp.current().world_size > 1 else {}))
    save_checkpoint(full, st.run_dir / "last.pt")
    write_metrics(st.run_dir / "metrics.csv", rows)


def _synthetic_rows(cfg: TrainConfig, plan: Any, fold: int, run_dir: Path,
                    choice: Any) -> np.ndarray:
    """The synthesizer step of one fold. Under DDP every rank fits and samples its
    round-robin share of the generators; then rank 0 records them all (every sample is in
    the cache by then) and the others read the rows."""
    from hpatk.core.synthetic import synthesize_fold

    kw = dict(per_class_n=cfg.synthetic_per_class, seed=cfg.seed,
              source=cfg.synthetic_source)
    done = None
    if ddp.current().enabled and cfg.synthetic_source == "fit":
        try:
            mine = synthesize_fold(plan, fold, run_dir, choice, **kw, write=False,
                                   share=ddp.spread).records
        except BaseException:
            ddp.agree(False, ddp.LONG_WAIT_S)
            raise
        if ddp.agree(True, ddp.LONG_WAIT_S):
            raise ddp.StoppedByPeer(f"rank {ddp.current().rank}: another rank failed fitting "
                                    f"the generators")
        done = {r["key"]: (r["source"], float(r["seconds"]))
                for records in ddp.all_objects(mine) for r in records if r["key"]}
    with ddp.main_first("recording the generators"):
        return synthesize_fold(plan, fold, run_dir, choice, **kw, write=ddp.is_main(),
                               done=done).rows


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    """``--workers``, or 0 on CPU (the model is the bottleneck; spawn costs seconds) and
    up to 8 spawn workers on CUDA."""
    if cfg.workers is not None:
        return int(cfg.workers)
    return 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))


def _finish(st: _Fold, rows: list[dict[str, float]], best: dict[str, dict[str, Any]],
            val_ds: Any, prep: BatchPrep, workers: int) -> FoldResult:
    """Tune thresholds with the best macro-F1 model on the validation fold; write
    ``thresholds.json`` (and into ``best_macro_f1.pt``) and ``report.md``."""
    from hpatk.core.checkpoint import build_classifier
    from hpatk.core.metrics import (
        apply_thresholds,
        label_rate_warning,
        per_class_f1,
        tune_thresholds,
    )
    from hpatk.core.report import write_report

    run_dir, cfg = st.run_dir, st.cfg
    best_path = run_dir / "best_macro_f1.pt"
    ddp.barrier()  # rank 0 has written it
    ckpt = load_checkpoint(best_path)
    model = build_classifier(ckpt).to(st.device)
    if cfg.channels_last and st.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    prep.augment = None
    d = ddp.current()
    loader = make_loader(val_ds, EpochBatchSampler(len(val_ds), cfg.max_batch_size,
                                                   shuffle=False, rank=d.rank,
                                                   world_size=d.world_size),
                         workers=workers, pin_memory=st.device.type == "cuda", seed=cfg.seed)
    res = infer(model, loader, prep, amp_dtype=st.amp_dtype, gather=True)
    y = (res.targets > 0.5).astype(np.uint8)
    thr = np.asarray(tune_thresholds(y, res.probs), dtype=np.float64)
    f1 = per_class_f1(y, (res.probs >= 0.5).astype(np.uint8))
    # what predict does with the thresholds: at least one label per image
    pred_t = np.asarray(apply_thresholds(res.probs, thr, at_least_one=True), dtype=np.uint8)
    f1_t = per_class_f1(y, pred_t)
    at_half = classification_metrics(res.targets, res.probs)
    tuned = predicted_metrics(y, pred_t)
    train_rows, val_rows = st.plan.split(st.fold)
    val_ids = [st.plan.ids[r] for r in val_rows]  # infer's order
    result = FoldResult(run_dir, st.fold, best, thr.tolist(), len(rows), val_ids,
                        res.probs.astype(np.float32), y)
    if not ddp.is_main():
        return result
    expected = float(st.plan.labels[train_rows][:, st.classes].sum(1).mean())
    predicted = float(pred_t.sum(1).mean()) if len(pred_t) else 0.0
    warning = label_rate_warning(predicted, expected, " on the validation fold")
    if warning:
        print(f"fold {st.fold}: {warning}", file=sys.stderr)
    write_thresholds(run_dir / "thresholds.json", st.classes, st.class_names, thr.tolist(),
                     checkpoint="best_macro_f1.pt", epoch=int(ckpt["epoch"]), fold=st.fold,
                     macro_f1_at_0_5=round(at_half["macro_f1"], 6),
                     macro_f1_tuned=round(tuned["macro_f1"], 6),
                     macro_f1_all_tuned=round(tuned["macro_f1_all"], 6),
                     classes_present=tuned["classes_present"],
                     macro_f1_note="over the classes present in the validation fold; "
                                   "macro_f1_all_tuned: over all the model's classes",
                     labels_per_image={"training": round(expected, 4),
                                       "validation_predicted": round(predicted, 4)},
                     note="tuned on the validation fold (F1-optimal per class; the default "
                          "0.5 where no cut beats calling every image positive)")
    ckpt["thresholds"] = [float(t) for t in thr]
    ckpt["labels_per_image"] = round(expected, 4)  # predict compares against it
    save_checkpoint(ckpt, best_path)
    settings = {"backbone": cfg.backbone, "head": cfg.head, "classes": cfg.classes,
                "size": st.plan.size, "stains": ",".join(st.plan.stains),
                "enhance": st.plan.enhance.get("name"), "aug": _aug_text(cfg),
                "loss": cfg.loss,
                "fold": f"{st.fold} of {cfg.folds}", "epochs": f"{len(rows)} of {cfg.epochs}",
                "lr": cfg.lr, "batch": f"{cfg.batch_size} (x2 every {cfg.batch_double_every}, "
                f"max {cfg.max_batch_size})", "device": str(st.device),
                "train / val images": f"{len(train_rows)}"
                f"{f' + {st.n_synthetic} synthetic' if st.n_synthetic else ''} / {len(val_ds)}"}
    best_tuned = {**{f"{k}.pt": v for k, v in best.items()},
                  "best_macro_f1.pt, tuned thresholds": {
        "epoch": int(ckpt["epoch"]), "val_macro_f1": tuned["macro_f1"],
        "val_micro_f1": tuned["micro_f1"], "val_accuracy": tuned["accuracy"],
        "val_paper_macro_f1": tuned["paper_macro_f1"],
        "val_macro_f1_all": tuned["macro_f1_all"]}}
    write_report(run_dir, title=f"hpatk run: {cfg.backbone}, fold {st.fold}", rows=rows,
                 settings=settings, best=best_tuned, class_names=st.class_names, f1=list(f1),
                 f1_tuned=list(f1_t), thresholds=thr.tolist(),
                 support=y.sum(0).astype(int).tolist(),
                 notes=[f"**{warning[0].upper()}{warning[1:]}**"] if warning else ())
    return result


def _aug_text(cfg: TrainConfig) -> str:
    from hpatk.core.synthetic import resolve_aug

    choice = resolve_aug(cfg.aug, cfg.aug_params, cfg.batch_aug)
    if choice.synth is None:
        return str(choice.batch or "none")
    return (f"{choice.synth} ({cfg.synthetic_per_class} per class, synthetic.csv) + "
            f"{choice.batch or 'no'} batch augmentation")


