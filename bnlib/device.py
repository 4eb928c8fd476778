"""Choosing where tensors live: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["get_device", "available_devices", "accelerator_available"]


def available_devices() -> list[str]:
    """The device types usable here, best first; ``"cpu"`` is always last."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def accelerator_available() -> bool:
    """True where a CUDA or MPS device is available."""
    return available_devices()[0] != "cpu"


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on: cuda, then mps, then cpu.

    ``prefer`` (or the environment variable ``BNLIB_DEVICE`` when ``prefer`` is
    None) forces a device such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Raises:
        ValueError: when the requested device is not available here; the
            message lists the ones that are.

    Example:
        >>> get_device("cpu")
        device(type='cpu')
    """
    import torch  # imported here so that `import bnlib` stays fast

    requested = prefer if prefer is not None else (os.environ.get("BNLIB_DEVICE") or None)
    if requested is None:
        return torch.device(available_devices()[0])
    origin = "prefer" if prefer is not None else "BNLIB_DEVICE"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{origin}={requested!r} is not a device name; expected one of {available_devices()}"
        ) from error
    available = available_devices()
    if device.type not in available:
        raise ValueError(
            f"{origin} asks for device {str(device)!r}, which is not available here; "
            f"available: {available}. Unset {origin} to choose automatically."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{origin} asks for {str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device
