"""medrecon: reconstruct medical scans with conditional diffusion models.

The package is layered (see docs/architecture.md): ``io`` reads and writes volumes, ``physics`` defines the
measurement operators, ``nn`` the network, ``diffusion`` the parameterisation, samplers and guidance, ``train``,
``recon`` and ``evaluate`` the commands built on them. Physics and diffusion import neither Hydra nor the
training layer.

The Python API (``medrecon.api``, docs/api.md) is available from here without importing anything heavy until
it is used: ``medrecon.load_model``, ``medrecon.reconstruct``, ``medrecon.get_task``, ``medrecon.baseline``
(and ``medrecon.api.evaluate``: ``medrecon.evaluate`` is the evaluation package).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API_NAMES = ("Model", "Reconstruction", "baseline", "get_task", "load_model", "reconstruct")


def __getattr__(name: str) -> Any:
    """Lazy access to ``medrecon.api`` and its functions (importing ``medrecon`` stays light)."""
    if name == "api" or name in _API_NAMES:
        import importlib

        api = importlib.import_module("medrecon.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'medrecon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "api", *_API_NAMES])
