"""Per-sample array transforms: crop/pad to the patch size, random flips and 90-degree rotations, in-plane
resizing.

They act on ``(C, *S)`` numpy arrays and draw from an explicit ``numpy.random.Generator`` seeded per sample
(never from MONAI's own random state), so a sample is a pure function of ``(index, seed)``: the same in any
DataLoader worker and after a resume. :func:`resize_plane` is deterministic (MONAI's ``Resize``); the training
augmentations that draw their parameters are in ``medrecon.data.augment``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PATCH_MULTIPLE = 8  # the U-Net downsamples three times


def patch_shape(size: int | Sequence[int], spatial_dims: int, scale: Sequence[int] = ()) -> tuple[int, ...]:
    """Validate ``data.patch_size``: every side a multiple of 8 and of the task's scale factor on that axis.

    Args:
        size: one side (square/cubic patches) or one per spatial axis.
        spatial_dims: 2 or 3.
        scale: the task's per-axis integer scale (``task.scale``), empty for none.
    """
    sides = (int(size),) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sides) != spatial_dims:
        raise ValueError(
            f"data.patch_size={list(sides)} needs {spatial_dims} sides for spatial_dims={spatial_dims}"
        )
    factors = tuple(scale) or (1,) * spatial_dims
    for axis, (side, factor) in enumerate(zip(sides, factors)):
        multiple = np.lcm(PATCH_MULTIPLE, int(factor))
        if side <= 0 or side % multiple:
            raise ValueError(
                f"data.patch_size side {side} (axis {axis}) must be a positive multiple of {multiple} "
                f"(8 for the U-Net, and the task's scale {factor}); "
                f"try {max(multiple, side // multiple * multiple)}"
            )
    return sides


def crop_or_pad(
    x: np.ndarray, size: Sequence[int], rng: np.random.Generator | None = None, fill: float = -1.0
) -> np.ndarray:
    """Crop (random offset with ``rng``, centred without) and/or pad (centred, with ``fill``) ``(C, *S)`` to
    size.

    ``fill`` defaults to -1, the encoded value of background (zero signal / air).
    """
    spatial = x.shape[1:]
    if len(size) != len(spatial):
        raise ValueError(f"patch size {tuple(size)} does not match the spatial shape {spatial}")
    index = [slice(None)]
    for n, s in zip(spatial, size):
        if n > s:
            start = int(rng.integers(0, n - s + 1)) if rng is not None else (n - s) // 2
            index.append(slice(start, start + s))
        else:
            index.append(slice(None))
    x = x[tuple(index)]
    pads = [(0, 0)] + [
        ((s - n) // 2, s - n - (s - n) // 2) if n < s else (0, 0) for n, s in zip(x.shape[1:], size)
    ]
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, pads, mode="constant", constant_values=fill)
    return x


def random_flip_rot90(
    x: np.ndarray, rng: np.random.Generator, flip: bool = True, rot90: bool = True
) -> np.ndarray:
    """Random flips of each spatial axis and a random multiple of 90 degrees in the first two spatial axes.

    A 2D rotation may swap a non-square slice's sides (crop/pad afterwards); a 3D patch is only rotated when
    its first two sides are equal, so its shape is kept.
    """
    spatial_axes = list(range(1, x.ndim))
    if flip:
        for axis in spatial_axes:
            if rng.random() < 0.5:
                x = np.flip(x, axis=axis)
    if rot90 and (x.ndim == 3 or x.shape[1] == x.shape[2]):
        # in the acquisition plane only (the first two spatial axes): rotating the through-plane axis of a 3D
        # patch would move the source's anisotropic resolution into the plane
        x = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
    return x


def resize_plane(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resample the image plane (the first two spatial axes) of ``(C, *S)`` to ``size``; other axes are kept.

    Each plane axis is resampled on its own with ``monai.transforms.Resize``: ``area`` (the mean over each new
    voxel's footprint, an anti-aliased shrink, like the tasks' block mean) where it shrinks, linear
    interpolation (``align_corners=False``: voxel centres, the grid's outer faces kept) where it grows. Neither
    pads, so a border is never mixed with a fill value, and neither overshoots the input's range.

    Args:
        x: ``(C, *S)`` with 2 or 3 spatial axes.
        size: the new sizes of the first two spatial axes (each >= 1).

    Returns:
        ``(C, size[0], size[1], *S[2:])`` float32 (``x`` itself when the sizes are unchanged).
    """
    from monai.transforms import Resize

    spatial = list(x.shape[1:])
    if len(size) != 2 or len(spatial) not in (2, 3) or any(int(n) < 1 for n in size):
        raise ValueError(f"cannot resize the plane of shape {tuple(x.shape)} to {tuple(size)}")
    out = np.asarray(x, dtype=np.float32)
    for axis, new in enumerate(int(n) for n in size):
        if new == spatial[axis]:
            continue
        grows = new > spatial[axis]
        spatial[axis] = new
        mode = ("bilinear" if len(spatial) == 2 else "trilinear") if grows else "area"
        out = np.asarray(Resize(tuple(spatial), mode=mode, align_corners=False if grows else None)(out))
    return out
