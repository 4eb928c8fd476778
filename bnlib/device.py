"""Choosing where tensors live: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["get_device", "resolve_device", "available_devices", "accelerator_available"]


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


def resolve_device(model: Any = None, device: str | torch.device | None = None) -> torch.device:
    """Where an entry point computes: ``device`` if given, else where ``model`` is, else :func:`get_device`.

    The one rule of every bnlib function that takes a model and a ``device``
    (:func:`bnlib.training.fit`, :func:`bnlib.training.evaluate`, the
    statistics re-estimation of :mod:`bnlib.inference`):

    1. the explicit ``device`` argument, checked by :func:`get_device` (so an
       unavailable device is a ValueError that lists the available ones);
    2. else the device of the model's first parameter, or of its first buffer
       when it has no parameters: a model already moved with ``.to(device)``
       stays where it is;
    3. else (no model, or a model without tensors) :func:`get_device`, which
       honours ``BNLIB_DEVICE`` and otherwise picks cuda, then mps, then cpu.

    A model built on the CPU therefore trains on the CPU unless it is moved or
    ``device`` is given: move it with ``model.to(bnlib.get_device())``, as the
    chapters do, or pass ``device=``.

    Args:
        model: an ``nn.Module`` or None.
        device: a device name or ``torch.device``, or None.

    Raises:
        TypeError: ``model`` is neither None nor an ``nn.Module``.
        ValueError: ``device`` names no device, or one not available here.

    Example:
        >>> import torch
        >>> resolve_device(torch.nn.Linear(2, 2))             # where the model is
        device(type='cpu')
        >>> resolve_device(torch.nn.Linear(2, 2), "cpu")      # the explicit argument wins
        device(type='cpu')
    """
    import torch

    if device is not None:
        return get_device(device)
    if model is None:
        return get_device()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else get_device()
