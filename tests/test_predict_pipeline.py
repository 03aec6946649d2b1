"""``hpatk predict``'s pipeline: the next batches are decoded and enhanced while ONNX
Runtime runs the current one (checked with events, not timings)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hpatk.export.predict import predict_folder, select_samples


class GatedClassifier:
    """Stands in for OnnxClassifier. The loads of batch ``b >= 2`` wait until model call
    ``b - 2`` has started, and calls 0 .. n-3 wait until a load of batch ``b + 2`` happens
    while they run: the read-ahead of two batches, proven with events. Loading a batch only
    after the previous call (no overlap) makes both waits time out.

    A load knows its batch from its sample's position (set by the test's ``load_image``
    wrapper in a thread-local), not from the order preprocess is called in: loader threads
    may preprocess samples out of order."""

    stains = ["green", "red", "blue", "yellow"]
    classes = [0, 1]

    def __init__(self, batch: int, n_batches: int, timeout: float = 20.0) -> None:
        self.batch, self.n_batches, self.timeout = batch, n_batches, timeout
        self.position = threading.local()
        self.started = [threading.Event() for _ in range(n_batches)]
        self.loaded_during = [threading.Event() for _ in range(n_batches)]
        self.running: int | None = None
        self.calls = 0
        self.overlapped: list[bool] = []

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        b = self.position.index // self.batch
        if b >= 2:
            self.started[b - 2].wait(self.timeout)
            if self.running == b - 2:
                self.loaded_during[b - 2].set()
        return raw[:, :4, :4]

    @staticmethod
    def to_float(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32) / 255

    def probs_of(self, x: np.ndarray, *, tta: str = "none") -> np.ndarray:
        k = self.calls
        self.running = k
        self.started[k].set()
        if k < self.n_batches - 2:
            self.overlapped.append(self.loaded_during[k].wait(self.timeout))
        self.running = None
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


def test_decoding_overlaps_the_model_calls(folder, monkeypatch):
    import hpatk.export.predict as predict

    samples = select_samples(folder)
    clf = GatedClassifier(batch=2, n_batches=4)
    index = {id(s): i for i, s in enumerate(samples)}
    real_load = predict.load_image

    def load_image(c, sample):
        clf.position.index = index[id(sample)]
        return real_load(c, sample)

    monkeypatch.setattr(predict, "load_image", load_image)
    res = predict_folder(clf, samples, batch_size=2, workers=2)  # type: ignore[arg-type]
    assert clf.calls == 4 and clf.overlapped == [True, True]
    assert res.ids == [s.id for s in samples] and res.probs.shape == (8, 2)
