"""Which torch device a command runs on (``auto``, ``cpu``, ``cuda[:N]``) and in which precision the network
runs there (``auto``, ``bf16``, ``fp32``)."""

from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISION_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp32")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn the user's ``device=`` option into a ``torch.device``.

    Args:
        name: ``"auto"`` (the first CUDA GPU when one is visible, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Raises:
        medrecon.errors.UsageError: for an unknown name, or CUDA asked for on a machine without a usable GPU.
    """
    from medrecon.errors import UsageError

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device={name} was asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use device=cpu or device=auto"
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device={name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(indices 0..{torch.cuda.device_count() - 1})"
            )
        return device
    raise UsageError(f"device={name!r} is not one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn the ``precision=`` option into ``"bf16"`` or ``"fp32"`` for ``device``.

    ``auto`` is bf16 autocast on CUDA (the network's convolutions and attention in bfloat16 on the tensor
    cores; EDM's preconditioning keeps the skip path, the sampler and the data consistency in float32) and
    fp32 on the CPU, where bf16 is slower on most processors.

    Raises:
        medrecon.errors.UsageError: for an unknown name.
    """
    from medrecon.errors import UsageError

    text = str(name).strip().lower()
    if text not in PRECISION_CHOICES:
        raise UsageError(f"precision={name!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if text == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return text


def network_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a network forward in ``precision`` (``"bf16"`` or ``"fp32"``) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cuda_memory_format(spatial_dims: int, device: torch.device) -> torch.memory_format | None:
    """The activation layout cuDNN's tensor-core kernels want on CUDA (channels_last, or channels_last_3d for
    volumes); ``None`` (keep the default) on other devices."""
    if device.type != "cuda":
        return None
    return torch.channels_last if int(spatial_dims) == 2 else torch.channels_last_3d
