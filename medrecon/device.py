"""Which torch device a command runs on: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``."""

from __future__ import annotations

import torch

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn the user's ``device=`` option into a ``torch.device``.

    Args:
        name: ``"auto"`` (the first CUDA GPU when one is visible, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Raises:
        medrecon.cli.UsageError: for an unknown name, or CUDA asked for on a machine without a usable GPU.
    """
    from medrecon.cli import UsageError

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
