"""Figure panels: one row per slice — ground truth | input | methods | |error| | uncertainty — as small PNGs.

Images are 2D arrays in scanner units, shown with one grey-level window per panel (the ground truth's 1st to
99th percentile), so methods are compared on the same scale; the error map is ``|method - ground truth|`` of
the reference method (diffusion when evaluated, else the last method), and the uncertainty the posterior
standard deviation (``samples > 1``). Matplotlib runs on its non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medrecon.io.atomic import atomic_path


def _window(gt: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(gt, [1.0, 99.0]))
    return (lo, hi) if hi > lo else (float(gt.min()), float(gt.max()) + 1e-6)


def save_panel(
    path: Path,
    *,
    ground_truth: np.ndarray,
    images: Mapping[str, np.ndarray],
    error_of: str | None = None,
    uncertainty: np.ndarray | None = None,
    title: str = "",
    dpi: int = 72,
) -> Path:
    """Write one row of panels to ``path`` (PNG, atomic).

    Args:
        ground_truth: ``(H, W)`` reference slice in scanner units.
        images: name -> ``(H, W)`` slice on the same grid, shown in order after the ground truth (the degraded
            input first by convention).
        error_of: the name in ``images`` whose absolute error is shown (default: the last one).
        uncertainty: ``(H, W)`` posterior standard deviation, or ``None``.
        title: a figure title (ids only, never tag text).
    """
    # an explicit non-interactive canvas: pyplot (and the process-wide backend a notebook uses) stays untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(images)
    if not names:
        raise ValueError("a figure panel needs at least one reconstructed image")
    error_of = names[-1] if error_of is None else error_of
    if error_of not in images:
        raise ValueError(f"error_of={error_of!r} is not one of the panel's images {names}")
    panels: list[tuple[str, np.ndarray, str]] = [("ground truth", ground_truth, "grey")]
    panels += [(name, images[name], "grey") for name in names]
    panels.append((f"|error| {error_of}", np.abs(images[error_of] - ground_truth), "error"))
    if uncertainty is not None:
        panels.append(("uncertainty (std)", uncertainty, "std"))
    lo, hi = _window(ground_truth)
    fig = Figure(figsize=(1.9 * len(panels), 2.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (label, image, kind) in zip(axes[0], panels):
        # rows of the array are the first (i) axis: show it transposed so i runs left-right like a viewer
        shown = np.asarray(image, dtype=np.float32).T
        if kind == "grey":
            ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        else:
            ax.imshow(
                shown,
                cmap="magma",
                vmin=0.0,
                vmax=max(float(np.percentile(shown, 99.5)), 1e-6),
                origin="lower",
                interpolation="nearest",
            )
        ax.set_title(label, fontsize=7)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
