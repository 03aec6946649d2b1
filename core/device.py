"""Where tensors run: the ``--device`` option and mixed precision, decided once."""

from __future__ import annotations

from typing import Any

import torch
from hpatk.core.errors import HpatkError


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` -> cuda when available, else cpu.

    Raises:
        HpatkError: not a torch device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HpatkError(f"--device '{name}' is not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HpatkError(f"--device {name}: CUDA is not available on this machine")
    return device


def amp_setup(device: torch.device, amp: bool) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, GradScaler or None): bf16 where supported, else fp16 with
    a scaler; nothing on CPU or with ``amp`` off."""
    if not amp or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")
