"""Where and in what precision the batched tensors live, and how much memory a job may give them."""

from __future__ import annotations

import os
from pathlib import Path

from dlnpipe.lazy import torch


def host_has_gpu() -> bool:
    """Whether this host shows an NVIDIA GPU to its processes, without importing torch (the workflow asks it
    while building the DAG): a device node /dev/nvidia<i>, unless CUDA_VISIBLE_DEVICES hides every device.
    Where torch has no CUDA build, ``auto`` still resolves to the CPU in the job (resolve_device)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(p.name[len("nvidia"):].isdigit() for p in Path("/dev").glob("nvidia*"))


def resolve_dtype(dtype) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64,
             torch.float32: torch.float32, torch.float64: torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected float32 or float64")
    return table[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA device")
    return dev


def memory_budget(device, *, fraction: float = 0.5, cpu_bytes: float = 4e9) -> float:
    """Bytes one job may give to batched tensors: ``fraction`` of a CUDA device's free memory, or
    ``cpu_bytes`` on CPU. Training and Lanczos size their batches from it, so a cell fits its device."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return fraction * free
    return float(cpu_bytes)
