"""``hpatk predict``'s pipeline: the next batches are decoded and enhanced while ONNX
Runtime runs the current one (checked with events, not timings)."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hpatk.export.predict import predict_folder, select_samples


class GatedClassifier:
    """Stands in for OnnxClassifier. Loads past the first two batches wait until a model
    call is running; each model call (but the last two, with nothing left to load) waits
    until a load happens during it. Without overlap both waits time out."""

    stains = ["green", "red", "blue", "yellow"]
    classes = [0, 1]

    def __init__(self, batch: int, timeout: float = 20.0) -> None:
        self.batch, self.timeout = batch, timeout
        self.loads = itertools.count()
        self.running = threading.Event()
        self.loaded_while_running = threading.Event()
        self.calls = 0
        self.overlapped: list[bool] = []

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        if next(self.loads) >= 2 * self.batch:  # batches 0 and 1 load up front
            self.running.wait(self.timeout)
        if self.running.is_set():
            self.loaded_while_running.set()
        return raw[:, :4, :4]

    @staticmethod
    def to_float(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32) / 255

    def probs_of(self, x: np.ndarray, *, tta: str = "none") -> np.ndarray:
        self.running.set()
        if self.calls < self.n_batches - 2:
            self.overlapped.append(self.loaded_while_running.wait(self.timeout))
        self.running.clear()
        self.loaded_while_running.clear()
        self.calls += 1
        return np.full((len(x), 2), 0.75, np.float32)

    @staticmethod
    def labels_of(probs: np.ndarray) -> tuple[list[list[int]], list[list[str]]]:
        return [[0, 1]] * len(probs), [["a", "b"]] * len(probs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from hpatk.core.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("pipe") / "data", n=1, size=32, seed=4,
                          n_test=8, workers=1)


def test_decoding_overlaps_the_model_calls(folder):
    samples = select_samples(folder)
    clf = GatedClassifier(batch=2)
    clf.n_batches = 4
    res = predict_folder(clf, samples, batch_size=2, workers=2)  # type: ignore[arg-type]
    assert clf.calls == 4 and clf.overlapped == [True, True]
    assert res.ids == [s.id for s in samples] and res.probs.shape == (8, 2)
