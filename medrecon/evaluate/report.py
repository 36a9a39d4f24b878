"""Evaluation reports: ``metrics.csv`` (one row per volume and method), ``report.json`` and ``report.md``.

Per method the report holds the mean and the sample standard deviation (``ddof=1``; 0 for a single volume) of
every metric over volumes; ``NaN`` values (an empty foreground mask) are left out of a mean, and non-finite
numbers are written as JSON ``null``. All files are written atomically and hold ids only, never tag text.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.evaluate.metrics import METRIC_NAMES, VolumeMetrics
from medrecon.io.atomic import atomic_write_text

CSV_COLUMNS: tuple[str, ...] = ("id", "method", "slices", *METRIC_NAMES, "seconds")


@dataclass(frozen=True)
class MetricRow:
    """The metrics of one volume reconstructed by one method (``slices``: how many 2D slices were scored)."""

    id: str
    method: str
    slices: int
    metrics: VolumeMetrics
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "slices": self.slices,
            **self.metrics.as_dict(),
            "seconds": self.seconds,
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def summarize(rows: Sequence[MetricRow], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: ``{metric: mean, metric_std: std, ..., "volumes": n}`` over the rows of that method.

    Methods are kept in the order given (methods without rows are left out).
    """
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        entry: dict[str, Any] = {}
        for name in METRIC_NAMES:
            values = np.array([getattr(r.metrics, name) for r in mine], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size == 0:
                mean, std = float("nan"), float("nan")
            else:
                mean = float(np.mean(values))
                std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
            entry[name] = mean
            entry[f"{name}_std"] = std
        entry["volumes"] = len(mine)
        entry["seconds"] = float(sum(r.seconds for r in mine))
        summary[method] = entry
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_report_json(
    path: Path,
    *,
    task: str,
    summary: dict[str, dict[str, Any]],
    items: int,
    config: dict[str, Any],
    notes: Sequence[str] = (),
    failed: Sequence[dict[str, str]] = (),
    nonfinite: dict[str, Any] | None = None,
    excluded: Sequence[dict[str, str]] = (),
) -> None:
    """``{"task", "methods": {name: {psnr, ssim, nmse, *_std, *_fg, volumes}}, "items", "config", ...}``.

    ``nonfinite`` (when given): ``{"volumes", "replaced_voxels", "excluded_voxels", "items": [{"id",
    "replaced", "excluded"}]}`` over the scored volumes that held NaN voxels: ``replaced`` were set to the
    volume's background value before degradation, ``excluded`` (those inside the evaluated slices) were left
    out of the scores.
    """
    report = {
        "task": task,
        "methods": summary,
        "items": items,
        "config": config,
        "notes": list(notes),
        "failed": list(failed),
        "excluded": list(excluded),  # records of the selection that prepare rejected: {"id", "reason", ...}
    }
    if nonfinite is not None:
        report["nonfinite"] = nonfinite
    atomic_write_text(path, json.dumps(_jsonable(report), indent=2) + "\n")


def nonfinite_note(nonfinite: dict[str, Any]) -> str:
    """A one-line note for the report on NaN voxels (see :func:`write_report_json`'s ``nonfinite``)."""
    return (
        f"NaN voxels: {nonfinite['volumes']} volume(s) held {nonfinite['replaced_voxels']} NaN voxel(s), set "
        f"to the volume's background value before degradation; {nonfinite['excluded_voxels']} of them lay in "
        "the evaluated slices and were excluded from every metric (no ground truth there)"
    )


def write_metrics_csv(path: Path, rows: Sequence[MetricRow]) -> None:
    """One row per (volume, method) with :data:`CSV_COLUMNS` (full float precision)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.as_dict().items()})
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` with numbers parsed (for tests and notebooks)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = {"id": row["id"], "method": row["method"], "slices": int(row["slices"])}
            for name in (*METRIC_NAMES, "seconds"):
                parsed[name] = float(row[name])
            rows.append(parsed)
    return rows


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def render_markdown(
    *, task: str, summary: dict[str, dict[str, Any]], items: int, notes: Sequence[str] = (), figures=()
) -> str:
    """A markdown report: one table row per method with mean ± std over volumes."""
    lines = [
        f"# medrecon evaluation — task `{task}`",
        "",
        f"{items} volume(s); mean ± standard deviation over volumes. PSNR in dB (data range = the "
        "ground-truth volume's maximum), SSIM averaged over slices (7x7 window), NMSE over the volume; "
        "`fg` = within the foreground mask.",
        "",
        "| task | method | volumes | PSNR | SSIM | NMSE | PSNR fg | SSIM fg | NMSE fg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, e in summary.items():
        cells = [
            _fmt(e["psnr"], e["psnr_std"], 2),
            _fmt(e["ssim"], e["ssim_std"], 4),
            _fmt(e["nmse"], e["nmse_std"], 4),
            _fmt(e["psnr_fg"], e["psnr_fg_std"], 2),
            _fmt(e["ssim_fg"], e["ssim_fg_std"], 4),
            _fmt(e["nmse_fg"], e["nmse_fg_std"], 4),
        ]
        lines.append(f"| {task} | {method} | {e['volumes']} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).as_posix()})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report_md(path: Path, **kwargs: Any) -> None:
    """Write :func:`render_markdown` atomically."""
    atomic_write_text(path, render_markdown(**kwargs))
