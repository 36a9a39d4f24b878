"""Map-style datasets of encoded 2D slices (optionally with 2.5D context) and 3D patches.

A training key is ``(item, seed)``: the sampler draws which slice/volume and a per-sample seed for the random
crop and the augmentations (``medrecon.data.augment``: flips, rotations, in-plane rescaling, gamma, bias
field), so every sample is reproducible and independent of the DataLoader worker. An
``int`` key is an evaluation sample: centred crop, no augmentation. Samples are ``(C, *patch)`` float32
tensors in [-1, 1]: ``C = 1``, or ``2 * context + 1`` neighbouring slices (centre in the middle) for 2.5D
context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from medrecon.data.augment import Augment
from medrecon.data.regions import Region, unit_problem
from medrecon.data.source import VolumeCache
from medrecon.data.transforms import crop_or_pad, random_flip_rot90, resize_plane

Key = int | tuple[int, int]


@dataclass(frozen=True)
class Foreground:
    """Foreground-aware sampling (``data.foreground``).

    Attributes:
        threshold: a voxel is foreground when its encoded value exceeds ``-1 + 2 * threshold``
            (``threshold`` is a fraction of the encoded range; 0.05 = 5 % above the background level).
        min_fraction: slices (or 3D patches) with a smaller foreground fraction are skipped.
        weighting: draw training slices with probability proportional to their foreground fraction (else
            uniformly among the kept slices).
    """

    threshold: float = 0.05
    min_fraction: float = 0.02
    weighting: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"data.foreground.threshold must be in [0, 1), got {self.threshold!r}")
        if not 0.0 <= self.min_fraction < 1.0:
            raise ValueError(f"data.foreground.min_fraction must be in [0, 1), got {self.min_fraction!r}")

    def fraction(self, array: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray | float:
        """Foreground fraction of an encoded array, reduced over ``axes`` (all when None)."""
        return np.mean(array > (-1.0 + 2.0 * self.threshold), axis=axes)


@dataclass(frozen=True)
class SliceRef:
    """Slice ``index`` along ``axis`` (0, 1 or 2) of region number ``region`` of the dataset."""

    region: int
    axis: int
    index: int


def _split_key(key: Key) -> tuple[int, np.random.Generator | None]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), np.random.default_rng(int(key[1]))
    return int(key), None


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class SliceDataset(Dataset):
    """2D slices ``(2 * context + 1, *patch)`` from regions of cached volumes.

    Args:
        cache: the encoded volumes.
        regions: the split's regions (``Region.volume`` indexes ``cache``).
        refs: the slices to draw from.
        patch: ``(H, W)`` output size (crop or pad with -1).
        context: neighbouring slices on each side (0 for plain 2D); indices are clamped to the region.
        augment: training augmentation (``None`` for none).
    """

    def __init__(
        self,
        cache: VolumeCache,
        regions: Sequence[Region],
        refs: Sequence[SliceRef],
        patch: Sequence[int],
        context: int = 0,
        augment: Augment | None = None,
    ) -> None:
        if context < 0:
            raise ValueError(f"data.context must be >= 0 slices, got {context!r}")
        self.cache, self.regions, self.refs = cache, list(regions), list(refs)
        self.patch, self.context, self.augment = tuple(patch), int(context), augment

    def __len__(self) -> int:
        return len(self.refs)

    def record_id(self, i: int) -> str:
        """The id of the manifest record sample ``i`` comes from (for messages about the data)."""
        return str(getattr(self.cache.records[self.regions[self.refs[i].region].volume], "id", "?"))

    def __getitem__(self, key: Key) -> torch.Tensor:
        i, rng = _split_key(key)
        ref = self.refs[i]
        region = self.regions[ref.region]
        view = region.view(self.cache.get(region.volume))
        n = view.shape[ref.axis]
        idx = np.clip(np.arange(ref.index - self.context, ref.index + self.context + 1), 0, n - 1)
        stack = np.moveaxis(np.take(view, idx, axis=ref.axis), ref.axis, 0)
        aug = self.augment if rng is not None else None
        if aug is not None:
            stack = random_flip_rot90(stack, rng, aug.flip, aug.rot90)
            factor = aug.draw_scale(rng)
            if factor is not None:  # the zoomed window has the patch size: the crop below draws nothing
                stack = aug.zoom(stack, self.patch, factor, rng)
        sample = crop_or_pad(stack, self.patch, rng)
        return _to_tensor(sample if aug is None else aug.intensity(sample, rng))


class PatchDataset(Dataset):
    """3D patches ``(1, *patch)``; an item is a region, the patch position is random (training) or centred.

    Training positions are foreground-aware: up to ``tries`` random positions are drawn and the first whose
    foreground fraction reaches ``foreground.min_fraction`` is used (else the best one seen).
    """

    def __init__(
        self,
        cache: VolumeCache,
        regions: Sequence[Region],
        patch: Sequence[int],
        augment: Augment | None = None,
        foreground: Foreground | None = None,
        tries: int = 8,
    ) -> None:
        self.cache, self.regions = cache, list(regions)
        self.patch, self.augment, self.foreground, self.tries = tuple(patch), augment, foreground, int(tries)

    def __len__(self) -> int:
        return len(self.regions)

    def record_id(self, i: int) -> str:
        """The id of the manifest record sample ``i`` comes from (for messages about the data)."""
        return str(getattr(self.cache.records[self.regions[i].volume], "id", "?"))

    def _position(
        self, view: np.ndarray, rng: np.random.Generator, size: Sequence[int] | None = None
    ) -> tuple[slice, ...]:
        best, best_fg = None, -1.0
        size = self.patch if size is None else tuple(size)
        for _ in range(max(1, self.tries)):
            start = [int(rng.integers(0, max(1, n - p + 1))) for n, p in zip(view.shape, size)]
            box = tuple(slice(s, s + p) for s, p in zip(start, size))
            if self.foreground is None:
                return box
            fg = float(self.foreground.fraction(view[box]))
            if fg >= self.foreground.min_fraction:
                return box
            if fg > best_fg:
                best, best_fg = box, fg
        return best  # type: ignore[return-value]

    def __getitem__(self, key: Key) -> torch.Tensor:
        i, rng = _split_key(key)
        region = self.regions[i]
        view = region.view(self.cache.get(region.volume))
        aug = self.augment if rng is not None else None
        if rng is None:  # centred patch (crop_or_pad centres)
            patch = view[None]
        else:
            factor = aug.draw_scale(rng) if aug is not None else None
            if factor is None:
                patch = view[self._position(view, rng)][None]
            else:  # a window of patch / factor voxels in plane, resampled to the patch
                window = aug.window(self.patch, factor)
                patch = view[self._position(view, rng, window)][None]
                patch = resize_plane(crop_or_pad(patch, window, None), self.patch[:2])
            if aug is not None:
                patch = random_flip_rot90(patch, rng, aug.flip, aug.rot90)
        patch = crop_or_pad(patch, self.patch, None)
        return _to_tensor(patch if aug is None else aug.intensity(patch, rng))


def slice_index(
    cache: VolumeCache,
    regions: Sequence[Region],
    axes: Sequence[int],
    foreground: Foreground | None,
) -> tuple[list[SliceRef], np.ndarray | None]:
    """All usable slices of ``regions`` along ``axes`` and their sampling weights.

    With ``foreground`` each volume is read once (through the cache) to measure the foreground fraction of
    every slice; slices below ``min_fraction`` are dropped and the weights are the fractions (``None`` =
    uniform when ``weighting`` is off). Without it no volume is read: the region shapes suffice. An axis
    across which a region's slices would be lines (a single-slice volume across axis 0 or 1) gives none.

    Raises:
        ValueError: no slice is left.
    """
    refs: list[SliceRef] = []
    weights: list[float] = []
    for r, region in enumerate(regions):
        usable = [a for a in axes if unit_problem(region.shape, 2, a) is None]  # no lines from one slice
        if foreground is None:
            for axis in usable:
                refs += [SliceRef(r, axis, s) for s in range(region.shape[axis])]
            continue
        view = region.view(cache.get(region.volume))
        for axis in usable:
            other = tuple(a for a in range(3) if a != axis)
            fractions = np.asarray(foreground.fraction(view, other))
            for s in np.flatnonzero(fractions >= max(foreground.min_fraction, 1e-12)):
                refs.append(SliceRef(r, axis, int(s)))
                weights.append(float(fractions[s]))
    if not refs:
        raise ValueError(
            "no slice has enough foreground (data.foreground.min_fraction="
            f"{None if foreground is None else foreground.min_fraction}); "
            "lower it or check the intensity encoder"
        )
    if foreground is None or not foreground.weighting:
        return refs, None
    return refs, np.asarray(weights, dtype=np.float64)


def evaluation_subset(count: int, n: int) -> list[int]:
    """``count`` evenly spaced indices into ``n`` items (all of them when ``count >= n``)."""
    if n <= 0 or count <= 0:
        return []
    if count >= n:
        return list(range(n))
    return [int(round(v)) for v in np.linspace(0, n - 1, count)]
