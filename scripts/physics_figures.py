"""One figure per task for docs/physics.md: ground truth | measurement | every applicable baseline.

    python scripts/physics_figures.py [--sample PATH] [--out docs/figures]   # PYTHONPATH=. in a checkout

Uses the sample scan as ``scripts/baseline_table.py`` prepares it (2 mm, [-1, 1]): the 2D tasks degrade axial
slice ``SLICE``; ``thick_slices`` degrades the volume in 3D and is shown on a coronal plane, where the
through-plane averaging is visible. Panels show [0, 1]-scaled intensities; titles give PSNR / SSIM on the
shown plane (data range 1). Writes ``physics_<task>.png`` (8-bit grayscale).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from baseline_table import SAMPLE, load_sample_volume, task_for  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from medrecon.baselines import BASELINES, applicable_baselines  # noqa: E402
from medrecon.physics import TASK_NAMES, MRITask, Task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLICE = 44  # axial index of the 2 mm volume shown for the 2D tasks
CORONAL = 56  # coronal index shown for thick slices


def plane(x: torch.Tensor) -> np.ndarray:
    """A task-grid tensor -> the displayed 2D plane on [0, 1] (rows: anterior / superior at the top)."""
    img = x[0, 0, :, CORONAL, :] if x.ndim == 5 else x[0, 0]
    return np.flipud(((img.detach().cpu().double().numpy() + 1) / 2).T)


def measurement_panel(task: Task, meas, shape: tuple[int, int]) -> tuple[np.ndarray, str, dict]:
    """The image shown for the measurement, its title and imshow keywords."""
    if isinstance(task, MRITask):
        k = meas.y[0, 0].abs().cpu().numpy()
        logk = np.log10(k + 1e-3 * k.max())
        return np.flipud(logk.T), f"k-space log|y|, R={task.acceleration:g}", {"cmap": "gray"}
    y = plane(meas.y)
    extent = (-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5)
    label = "noisy y" if y.shape == shape else f"y ({y.shape[0]}x{y.shape[1]})"
    return y, label, {"cmap": "gray", "vmin": 0, "vmax": 1, "extent": extent, "interpolation": "nearest"}


def figure(task: Task, vol: np.ndarray, out: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    if task.spatial_dims == 3:
        x = torch.from_numpy(vol)[None, None]
    else:
        x = torch.from_numpy(np.ascontiguousarray(vol[:, :, SLICE]))[None, None]
    meas = task.degrade(x, gen)
    gt = plane(x)
    names = applicable_baselines(task)
    fig, axes = plt.subplots(1, 2 + len(names), figsize=(2.0 * (2 + len(names)), 2.5), dpi=90)
    axes[0].imshow(gt, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("ground truth", fontsize=8)
    img, label, kw = measurement_panel(task, meas, gt.shape)
    axes[1].imshow(img, **kw)
    axes[1].set_title(label, fontsize=8)
    for ax, name in zip(axes[2:], names):
        rec = plane(BASELINES[name](task, meas))
        score = (
            peak_signal_noise_ratio(gt, rec, data_range=1.0),
            structural_similarity(gt, rec, data_range=1.0),
        )
        ax.imshow(rec, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}\n{score[0]:.2f} dB / {score[1]:.3f}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{task.name}" + (" (3D, coronal plane)" if task.spatial_dims == 3 else ""), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = out / f"physics_{task.name}.png"
    Image.open(buf).convert("L").save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the sample NIfTI (default: bundled)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    vol = load_sample_volume(args.sample)
    for name in TASK_NAMES:
        path = figure(task_for(name), vol, args.out)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
