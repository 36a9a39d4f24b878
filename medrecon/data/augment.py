"""Training augmentations (``data.augment``): what a clean sample may undergo before the task degrades it.

Geometry:

- ``flip``, ``rot90``: random flips of every spatial axis, random 90-degree rotations in the image plane
  (:func:`medrecon.data.transforms.random_flip_rot90`);
- ``scale: [lo, hi]``: in-plane rescaling. A window of ``ceil(patch / s)`` voxels of the ground truth is
  resampled to the patch size (``s`` log-uniform in ``[lo, hi]``; area averaging where it shrinks, linear
  interpolation where it grows: :func:`medrecon.data.transforms.resize_plane`), so a volume of in-plane spacing
  ``d`` also trains the model at the apparent spacing ``d / s``, and the task then degrades that image. A shrink
  (``s < 1``, coarser voxels) is what a coarser scanner grid measures; a zoom (``s > 1``) can only interpolate,
  so it is smoother than a scan of truly finer voxels.

Intensity, on the clean sample after its final crop, in the encoded domain mapped to ``t = (x + 1) / 2`` (the
background ``-1`` is ``t = 0`` and stays there):

- ``gamma: [lo, hi]``: ``t -> t ** g`` (``g`` log-uniform in ``[lo, hi]``; odd-symmetric below 0, so the map is
  monotonic on every value);
- ``bias_field: strength``: ``t -> t * exp(P)``, ``P`` a sum of products of Legendre polynomials of degree <= 3
  along each axis of the patch, with coefficients uniform in ``[-strength, strength]`` (MONAI's
  ``RandBiasField``): a smooth, positive, multiplicative field like an MR receive-coil shading (the constant
  term is an overall gain).

The result is clipped to ``[min(-1, x.min()), max(1, x.max())]``, so a clipped encoding stays clipped. Each of
``scale``, ``gamma`` and ``bias_field`` applies to a sample with probability ``p``.

Every random number comes from the sample's own ``numpy.random.Generator`` (seeded by the sampler's key), drawn
in a fixed order and only for the transforms that are on: with ``scale``, ``gamma`` and ``bias_field`` off a
sample is bit-identical to one drawn before they existed, and a resumed run draws the same samples. MONAI's
``RandBiasField`` keeps its own ``RandomState``; it is re-seeded from the sample's generator on every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medrecon.data.transforms import crop_or_pad, resize_plane

BIAS_DEGREE = 3  # MONAI's default: Legendre degree <= 3 along each axis, a few smooth lobes across the patch


def _range(value: Any, name: str, low: float, high: float) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"data.augment.{name}={value!r} must be [lo, hi] or null") from None
    if not (low <= lo <= hi <= high):
        raise ValueError(f"data.augment.{name}={[lo, hi]} must satisfy {low:g} <= lo <= hi <= {high:g}")
    return lo, hi


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw whose logarithm is uniform in ``[log lo, log hi]`` (a factor and its inverse equally likely)."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass(frozen=True)
class Augment:
    """The ``data.augment`` options (see the module docstring); ``None`` turns a transform off.

    Attributes:
        flip, rot90: random flips and in-plane 90-degree rotations.
        scale: ``(lo, hi)`` in-plane zoom factors, ``0.1 <= lo <= hi <= 10`` (``[0.6, 1.5]``: apparent voxel
            sizes from ``d / 1.5`` to ``d / 0.6``).
        gamma: ``(lo, hi)`` exponents, ``0.1 <= lo <= hi <= 10`` (``[0.7, 1.5]``).
        bias_field: the largest coefficient of the log field, in ``(0, 1]`` (``0.3``); 0 is off.
        p: probability that each of scale, gamma and bias_field is applied to a sample.

    Raises:
        ValueError: a value out of range (names the option).
    """

    flip: bool = True
    rot90: bool = True
    scale: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    bias_field: float | None = None
    p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _range(self.scale, "scale", 0.1, 10.0))
        object.__setattr__(self, "gamma", _range(self.gamma, "gamma", 0.1, 10.0))
        strength = self.bias_field
        if strength is not None:
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
                raise ValueError(f"data.augment.bias_field={strength!r} must be a number in [0, 1] or null")
            object.__setattr__(self, "bias_field", float(strength) or None)
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p <= 1:
            raise ValueError(f"data.augment.p={self.p!r} must be a probability in [0, 1]")

    def draw_scale(self, rng: np.random.Generator) -> float | None:
        """This sample's zoom factor, or ``None`` (scale off, or not drawn with probability ``p``)."""
        if self.scale is None or not rng.random() < self.p:
            return None
        return log_uniform(rng, *self.scale)

    @staticmethod
    def window(patch: Sequence[int], factor: float) -> tuple[int, ...]:
        """The source window a zoom by ``factor`` resamples to ``patch``: ``ceil(patch / factor)`` in plane."""
        plane = tuple(max(1, math.ceil(p / factor - 1e-9)) for p in patch[:2])
        return plane + tuple(patch[2:])

    def zoom(
        self, x: np.ndarray, patch: Sequence[int], factor: float, rng: np.random.Generator | None
    ) -> np.ndarray:
        """``(C, *S)`` -> ``(C, *patch)``: a window of :meth:`window` voxels (random position with ``rng``,
        padded with the background -1 where ``x`` is smaller) resampled in plane to the patch size.

        The apparent zoom is ``patch / window`` per plane axis (within a voxel of ``factor``).
        """
        window = self.window(patch, factor)
        return resize_plane(crop_or_pad(x, window, rng), patch[:2])

    def intensity(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gamma and bias field of an encoded ``(C, *S)`` sample (see the module docstring)."""
        if self.gamma is None and self.bias_field is None:
            return x
        out = x
        if self.gamma is not None and rng.random() < self.p:
            out = gamma_transform(out, log_uniform(rng, *self.gamma))
        if self.bias_field is not None and rng.random() < self.p:
            out = apply_bias_field(out, self.bias_field, int(rng.integers(2**32)))
        if out is x:
            return x
        return np.clip(out, min(-1.0, float(x.min())), max(1.0, float(x.max()))).astype(np.float32)


def gamma_transform(x: np.ndarray, gamma: float) -> np.ndarray:
    """``t -> sign(t) |t| ** gamma`` on ``t = (x + 1) / 2`` (encoded ``[-1, 1]`` -> ``[0, 1]`` and back).

    Fixes -1 and +1 (and the background), maps ``[-1, 1]`` onto itself, and is strictly increasing everywhere.
    MONAI's ``AdjustContrast`` is not used: it rescales by each image's own minimum and maximum, so the same
    tissue would map differently in different crops.
    """
    t = (np.asarray(x, dtype=np.float32) + 1.0) / 2.0
    return (2.0 * np.sign(t) * np.abs(t) ** np.float32(gamma) - 1.0).astype(np.float32)


def apply_bias_field(x: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """``t -> t * exp(P)`` on ``t = (x + 1) / 2``, ``P`` from MONAI's ``RandBiasField`` (Legendre degree up to
    :data:`BIAS_DEGREE` per axis, coefficients uniform in ``[-strength, strength]``) seeded with ``seed``.

    The same field multiplies every channel (the neighbouring slices of a 2.5D sample see the same shading).
    """
    from monai.transforms import RandBiasField

    field = RandBiasField(degree=BIAS_DEGREE, coeff_range=(-strength, strength), prob=1.0)
    field.set_random_state(seed=seed)
    t = (np.asarray(x, dtype=np.float32) + 1.0) / 2.0
    return (2.0 * np.asarray(field(t), dtype=np.float32) - 1.0).astype(np.float32)
