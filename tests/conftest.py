"""Shared fixtures. Options follow kornia: ``--device`` / ``--dtype`` with env fallbacks
(HPATK_TEST_DEVICE, HPATK_TEST_DTYPE); CUDA tests skip without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=os.environ.get("HPATK_TEST_DEVICE", "cpu"),
                     help="cpu, cuda or all")
    parser.addoption("--dtype", default=os.environ.get("HPATK_TEST_DTYPE", "float32"),
                     help="float32, float64 or all")


def _devices(config: pytest.Config) -> list[str]:
    value = config.getoption("--device")
    return ["cpu", "cuda"] if value == "all" else [value]


def _dtypes(config: pytest.Config) -> list[str]:
    value = config.getoption("--dtype")
    return ["float32", "float64"] if value == "all" else [value]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(metafunc.config), indirect=True)
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", _dtypes(metafunc.config), indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest):
    import torch

    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(name)


@pytest.fixture
def dtype(request: pytest.FixtureRequest):
    import torch

    return getattr(torch, request.param)


def pytest_configure(config: pytest.Config) -> None:
    # Two xdist workers on two cores: one torch thread each avoids oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover
            pass
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _same_global_rngs_for_every_test():
    """Every test starts from the same global RNG states, whatever ran before it: an
    unseeded ``torch.rand`` in a test gives the same input under xdist's changing test
    order as in a run of the test alone. torch is seeded only once loaded (it starts from
    a fixed seed when imported later)."""
    import random
    import sys

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the Kaggle layout (96 images, 64 px, seed 0)."""
    from hpatk.core.synth import make_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic(out, n=96, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_cache(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset cached with CLAHE at 64 px."""
    from hpatk.core.cache import build_cache

    out = tmp_path_factory.mktemp("cache") / "cache.h5"
    return build_cache(synth_data, out, enhance="clahe", size=64, workers=1)


@pytest.fixture(scope="session")
def top5_dataset(tmp_path_factory: pytest.TempPathFactory):
    """``top5_dataset(n=, size=, seed=)`` -> (dataset folder, cache): ``n`` synthetic images of
    the paper's five classes at ``size`` px, cached with CLAHE at that size, laid out as
    ``ROOT/data`` and ``ROOT/cache.h5``. Built once per worker and parameter set; tests
    that write to either copy it first."""
    from hpatk.core.cache import build_cache
    from hpatk.core.synth import make_synthetic

    made: dict[tuple[int, int, int], tuple[Path, Path]] = {}

    def make(*, n: int, size: int, seed: int) -> tuple[Path, Path]:
        if (n, size, seed) not in made:
            root = tmp_path_factory.mktemp(f"top5-n{n}-{size}px-seed{seed}")
            folder = make_synthetic(root / "data", n=n, size=size, seed=seed, classes="top5",
                                    workers=1)
            cache = build_cache(folder, root / "cache.h5", enhance="clahe", size=size, workers=1)
            made[n, size, seed] = (folder, cache)
        return made[n, size, seed]

    return make


@pytest.fixture(scope="session")
def small_cache(top5_dataset) -> Path:
    """The cache of 40 top-5 images at 32 px (seed 1): for tests of mechanics, not of
    learning (test_train, test_distributed)."""
    return top5_dataset(n=40, size=32, seed=1)[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one torch thread ran 4-10x faster than two.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def throwaway_plugin():
    """Register a plugin object for one test; unregister it in ``finally``.

    Usage: ``throwaway_plugin(obj, name)`` returns the registry.
    """
    from hpatk.core import get_registry

    reg = get_registry()
    names: list[str] = []

    def register(obj: object, name: str):
        reg.pm.register(obj, name=name)
        names.append(name)
        return reg

    try:
        yield register
    finally:
        for name in names:
            reg.pm.unregister(name=name)


@pytest.fixture(scope="session")
def documentation() -> str:
    """The documentation a user reads: README.md (the guide) followed by every page of
    the reference site (docs/pages/*.md), as one text to search."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *sorted((root / "docs" / "pages").glob("*.md"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)
