"""Small helpers that exist once in core (device, file hash, umask, stain composite),
against their references."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import torch
from hpatk.core.classes import STAINS
from hpatk.core.device import amp_setup, resolve_device
from hpatk.core.errors import HpatkError, first_line, typed_line
from hpatk.core.io import current_umask, file_sha256
from hpatk.core.picture import composite


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    with pytest.raises(HpatkError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HpatkError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_amp_setup_is_off_on_cpu():
    assert amp_setup(torch.device("cpu"), True) == (None, None)
    assert amp_setup(torch.device("cuda"), False) == (None, None)


def test_file_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "blob"
    data = os.urandom(3000)
    p.write_bytes(data)
    assert file_sha256(p, chunk=1024) == hashlib.sha256(data).hexdigest()


def test_current_umask_matches_os(tmp_path):
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
    finally:
        os.umask(old)


def test_cache_file_mode_follows_umask(synth_cache):
    """The built cache is readable as any file the user writes (mkstemp alone is 0600)."""
    mode = stat.S_IMODE(os.stat(synth_cache).st_mode)
    assert mode == 0o666 & ~current_umask()


def test_composite_uint8_saturates():
    img = np.zeros((4, 2, 2), np.uint8)
    img[3] = 200  # yellow only: half red + half green
    rgb = composite(img, ("green", "red", "blue", "yellow"))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [100, 100, 0]
    img[1] = 255  # plus red: saturates, never wraps around
    assert composite(img, ("green", "red", "blue", "yellow"))[0, 0].tolist() == [255, 100, 0]


def test_composite_float_batch_of_tensors():
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0] = 1.0  # green
    x[0, 3, 0, 0] = 1.0  # yellow = red + green (half each)
    rgb = composite(x, STAINS)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.float32
    assert np.allclose(rgb[0, 1, 1], [0, 1, 0])
    assert np.allclose(rgb[0, 0, 0], [0.5, 1, 0])
    assert np.allclose(composite(torch.ones(1, 2, 1, 1), ["c0", "c1"]), 2 / 3)  # others: gray
    with pytest.raises(ValueError):
        composite(x, STAINS[:3])


def test_composite_equals_integer_reference():
    """HPA's convention written with integers: R = red + yellow // 2, G = green +
    yellow // 2, B = blue, each clipped to 255."""
    rng = np.random.default_rng(0)
    g, r, b, y = rng.integers(0, 256, (4, 16, 16)).astype(np.int32)
    ref = np.stack([np.clip(r + y // 2, 0, 255), np.clip(g + y // 2, 0, 255), b], -1)
    img = np.stack([g, r, b, y]).astype(np.uint8)
    assert (composite(img, STAINS) == ref).all()


def test_save_figure_writes_a_png_atomically_and_closes(tmp_path):
    from hpatk.core.picture import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "plot.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["plot.png"]  # no temporary left


def test_cache_defaults_are_decided_once():
    """The default enhancement and size come from one place: the cache API's defaults
    and the CLI's are the same constants."""
    import inspect

    from hpatk.cli.cache import cache as cache_group
    from hpatk.core.cache import (
        DEFAULT_ENHANCE,
        DEFAULT_SIZE,
        build_cache,
        default_cache_path,
        ensure_cache,
    )

    assert (DEFAULT_ENHANCE, DEFAULT_SIZE) == ("clahe", 512)
    for fn in (build_cache, ensure_cache, default_cache_path):
        params = inspect.signature(fn).parameters
        assert params["enhance"].default == DEFAULT_ENHANCE
        assert params["size"].default == DEFAULT_SIZE
    options = {p.name: p.default for p in cache_group.commands["build"].params}
    assert options["enhance"] == DEFAULT_ENHANCE and options["size"] == DEFAULT_SIZE


def test_first_line_and_typed_line():
    assert first_line(ValueError("bad value\nmore detail")) == "bad value"
    assert first_line(ValueError("  ")) == "ValueError"
    assert first_line(OSError("x" * 400)) == "x" * 300
    assert typed_line(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert typed_line(RuntimeError()) == "RuntimeError"  # no message: the type alone
    assert typed_line(HpatkError("one clear line")) == "one clear line"
