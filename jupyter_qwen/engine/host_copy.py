"""Host-to-device copies that never make the host wait for queued GPU work."""

from __future__ import annotations

import torch


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without waiting: from pinned memory on a GPU, so the host does not block on the
    work already queued (a copy from pageable memory waits for it)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def long_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    return host_to_device(torch.tensor(values, dtype=torch.int64), device)
