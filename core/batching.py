"""Moving batches from the cache to the model: whole-batch reads, uint8 transfers,
conversion and normalisation on the training device, and the inference loop that
training (validation) and ``hpatk evaluate`` share.

Why whole batches: per-sample IPC, not the disk, is the cost of DataLoader workers, and
float batches are 4x the bytes (MEASURED.md). Workers read a batch of uint8 images and
send one tensor; the device converts it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


class BatchReader(Dataset):
    """Index a per-sample dataset with a list of indices; returns the stacked batch.

    Shape:
        ``reader[[i, j, ...]] -> (uint8 (B, C, H, W), float32 (B, K))``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return read_batch(self.dataset, indices)


def read_batch(dataset: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch from ``dataset``: its ``read_batch`` when it has one (the cache reads
    sorted runs of rows as slices), each part of a ``ConcatDataset`` separately, else
    sample by sample.

    Shape:
        (uint8 (B, C, H, W), float32 (B, K)).
    """
    from torch.utils.data import ConcatDataset

    if hasattr(dataset, "read_batch"):
        images, targets = dataset.read_batch(indices)
        return images, targets.float()
    if isinstance(dataset, ConcatDataset):
        idx = np.asarray(indices, dtype=np.int64)
        starts = np.array([0, *dataset.cumulative_sizes[:-1]])
        part = np.searchsorted(dataset.cumulative_sizes, idx, side="right")
        images = targets = None
        for d in np.unique(part).tolist():
            sel = np.flatnonzero(part == d)
            x, y = read_batch(dataset.datasets[d], (idx[sel] - starts[d]).tolist())
            if images is None or targets is None:
                images = x.new_empty((len(idx), *x.shape[1:]))
                targets = y.new_empty((len(idx), *y.shape[1:]))
            images[torch.from_numpy(sel)] = x
            targets[torch.from_numpy(sel)] = y
        assert images is not None and targets is not None
        return images, targets
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    targets = torch.stack([torch.as_tensor(y, dtype=torch.float32) for _, y in items])
    return images, targets


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices, shuffled from ``(seed, epoch)`` alone, so a resumed run sees
    the same order as a straight one. The batch size may change between epochs.

    ``batch_size`` is the *global* batch. Shuffled (training), every step takes the next
    ``batch_size`` images of the epoch's permutation (the same on every rank) and rank
    ``r`` of ``world_size`` takes the ``r``-th of ``world_size`` equal parts, so each
    process trains on ``batch_size / world_size`` images per step, every rank makes the
    same number of steps and each image is seen exactly once per epoch over all ranks.
    A trailing batch too small to give every rank two images (BatchNorm cannot train on
    one) joins the batch before it. Unshuffled (evaluation), rank ``r`` reads the
    ``r``-th contiguous part of ``0..n-1``: the ranks' outputs concatenated in rank
    order are in dataset order.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.set_epoch(0, batch_size)

    def set_epoch(self, epoch: int, batch_size: int | None = None) -> None:
        """Reshuffle for ``epoch`` (and take the schedule's global batch size)."""
        self.epoch = epoch
        if batch_size is not None:
            if self.shuffle and batch_size % self.world_size:
                raise ValueError(f"the global batch {batch_size} does not divide over "
                                 f"{self.world_size} processes")
            self.batch_size = batch_size

    def _global_batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            return []
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < min(self.batch_size, 2 * self.world_size):
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            for batch in self._global_batches():
                yield np.array_split(batch, self.world_size)[self.rank].tolist()
            return
        part = np.array_split(np.arange(self.n), self.world_size)[self.rank]
        per = -(-self.batch_size // self.world_size)
        for start in range(0, len(part), per):
            yield part[start:start + per].tolist()

    def __len__(self) -> int:
        if self.shuffle:
            full, rest = divmod(self.n, self.batch_size)
            own = rest >= min(self.batch_size, 2 * self.world_size)  # else joins the last
            return max(1, full + own) if self.n else 0
        part = len(np.array_split(np.arange(self.n), self.world_size)[self.rank])
        return -(-part // -(-self.batch_size // self.world_size))


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, *, workers: int = 0,
                pin_memory: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader reading whole batches (see :class:`BatchReader`).

    Workers use the spawn context (fork after cv2 has run deadlocks, MEASURED.md) and
    persist across epochs; the loader has its own generator so that creating an iterator
    never draws from the global RNG (resume equivalence).
    """
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4)
    return DataLoader(BatchReader(dataset), batch_size=None, sampler=sampler,
                      num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed), **kw)


class BatchPrep(nn.Module):
    """uint8 batch on any device -> normalised float batch on ``device``.

    Selects input stains, converts to [0, 1], optionally augments (in [0, 1]), then
    normalises ``(x - mean) / std`` per channel; channels_last on CUDA.

    Shape:
        uint8 (B, C_cache, H, W) -> float32 (B, C_in, H, W).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *,
                 stain_index: Sequence[int] | None = None, device: torch.device | str = "cpu",
                 channels_last: bool = False, augment: nn.Module | None = None) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stain_index = list(stain_index) if stain_index is not None else None
        self.channels_last = channels_last
        self.augment = augment
        self.to(self.device)

    def forward(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.stain_index is not None:
            x = x[:, self.stain_index]
        x = x.float().div_(255.0)
        if train and self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass
class Inference:
    """Outputs of :func:`infer`: probabilities (N, K), targets (N, K), mean loss."""

    probs: np.ndarray
    targets: np.ndarray
    loss: float | None


@torch.inference_mode()
def infer(model: nn.Module, loader: DataLoader, prep: BatchPrep, *,
          loss_fn: nn.Module | None = None, amp_dtype: torch.dtype | None = None,
          desc: str = "", gather: bool = False, tta: str = "none") -> Inference:
    """Run ``model`` (eval mode) over ``loader``; sigmoid probabilities and mean loss.

    With ``gather`` under a launch, each rank's loader reads its shard (an unshuffled
    :class:`EpochBatchSampler` with ``rank``/``world_size``) and every rank gets all of
    them, in dataset order, and the mean loss over all images. ``tta="flips"`` averages
    the probabilities of the four flips (:mod:`hpatk.core.tta`); the loss stays the
    unflipped images'.

    Shape:
        probs, targets: (N, K) float32.
    """
    from hpatk.core.progress import progress
    from hpatk.core.tta import tta_axes

    axes = tta_axes(tta)

    model.eval()
    probs, targets = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=prep.device)
    n = 0
    it = progress(loader, desc=desc, unit="batch") if desc else loader
    for images, y in it:
        x = prep(images)
        yd = y.to(prep.device, non_blocking=True)
        with torch.autocast(prep.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            views = [model(x.flip(a) if a else x).float() for a in axes]
        logits = views[0]
        if loss_fn is not None:
            loss_sum += loss_fn(logits, yd).double() * len(yd)
        p = torch.sigmoid(logits)
        for v in views[1:]:
            p = p + torch.sigmoid(v)
        probs.append((p / len(views)).cpu())
        targets.append(y.float())
        n += len(y)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    t = torch.cat(targets).numpy() if targets else np.zeros((0, 0), np.float32)
    total, count = float(loss_sum), n
    if gather:
        from hpatk.core import distributed as ddp

        p, t = ddp.all_gather_rows(p), ddp.all_gather_rows(t)
        total, count = ddp.all_sum([total, count])
    loss = total / max(count, 1) if loss_fn is not None else None
    return Inference(p, t, loss)


def channel_stats(dataset: Dataset, *, max_images: int = 2000,
                  stain_index: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images in [0, 1], over at most ``max_images`` images
    spread evenly over ``dataset`` (deterministic).

    Returns:
        (mean, std), each a list of C floats; std is floored at 1e-3.
    """
    n = len(dataset)  # type: ignore[arg-type]
    pick = np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(int))
    s = s2 = None
    count = 0
    for i in pick.tolist():
        x = torch.as_tensor(dataset[i][0])
        if stain_index is not None:
            x = x[list(stain_index)]
        x = x.double().div_(255.0).flatten(1)
        s = x.sum(1) if s is None else s + x.sum(1)
        s2 = (x * x).sum(1) if s2 is None else s2 + (x * x).sum(1)
        count += x.shape[1]
    assert s is not None and s2 is not None
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return [float(v) for v in mean], [float(v) for v in std]
