"""Evaluation reports: ``metrics.csv`` (one row per volume and method), ``report.json`` and ``report.md``.

Per method the report holds the mean and the sample standard deviation (``ddof=1``; 0 for a single volume) of
every metric over volumes; ``NaN`` values (an empty foreground mask) are left out of a mean, and non-finite
numbers are written as JSON ``null``. All files are written atomically and hold ids only, never tag text.
:class:`Report` holds all of it as data (what ``medrecon.api.evaluate`` returns; ``Report.write`` writes the
three files), with :class:`MethodScores` per method.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    protocol: str | None = None,
) -> None:
    """``{"task", "protocol", "methods": {name: {psnr, ssim, nmse, *_std, *_fg, volumes}}, "items", ...}``.

    ``protocol`` (when given): how the scores were made, ``simulated`` (ground truth degraded by the task,
    ``medrecon.evaluate.metrics``) or ``fastmri`` (fastMRI files' measured k-space against their own targets,
    ``medrecon.evaluate.fastmri_protocol``), so the two are never mistaken for each other.

    ``nonfinite`` (when given): ``{"volumes", "replaced_voxels", "excluded_voxels", "items": [{"id",
    "replaced", "excluded"}]}`` over the scored volumes that held NaN voxels: ``replaced`` were set to the
    volume's background value before degradation, ``excluded`` (those inside the evaluated slices) were left
    out of the scores.
    """
    report = report_data(
        task=task,
        summary=summary,
        items=items,
        config=config,
        notes=notes,
        failed=failed,
        nonfinite=nonfinite,
        excluded=excluded,
        protocol=protocol,
    )
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def report_data(
    *,
    task: str,
    summary: dict[str, dict[str, Any]],
    items: int,
    config: dict[str, Any],
    notes: Sequence[str] = (),
    failed: Sequence[dict[str, str]] = (),
    nonfinite: dict[str, Any] | None = None,
    excluded: Sequence[dict[str, str]] = (),
    protocol: str | None = None,
) -> dict[str, Any]:
    """The content of ``report.json`` (see :func:`write_report_json`); non-finite numbers become ``None``."""
    report = {
        "task": task,
        **({"protocol": protocol} if protocol is not None else {}),
        "methods": summary,
        "items": items,
        "config": config,
        "notes": list(notes),
        "failed": list(failed),
        "excluded": list(excluded),  # records of the selection that prepare rejected: {"id", "reason", ...}
    }
    if nonfinite is not None:
        report["nonfinite"] = nonfinite
    return _jsonable(report)


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
            for name in (*METRIC_NAMES, "seconds"):  # a column newer than the file reads as NaN
                parsed[name] = float(row[name]) if row.get(name) not in (None, "") else math.nan
            rows.append(parsed)
    return rows


_PROTOCOLS = {
    "simulated": "medrecon's own: the ground truth degraded by the task (simulated measurements), scored "
    "in scanner units",
    "fastmri": "fastMRI's: reconstructions from the files' measured k-space, scored against their "
    "reconstruction_rss / reconstruction_esc after a centre crop to the target width (as fastMRI's "
    "evaluate.py; comparable with published numbers for the same files and masks; no `fg` metrics)",
}


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def render_markdown(
    *,
    task: str,
    summary: dict[str, dict[str, Any]],
    items: int,
    notes: Sequence[str] = (),
    figures=(),
    protocol: str | None = None,
) -> str:
    """A markdown report: one table row per method with mean ± std over volumes (``protocol``: see
    :func:`write_report_json`)."""
    lines = [
        f"# medrecon evaluation — task `{task}`",
        "",
        f"{items} volume(s); mean ± standard deviation over volumes. PSNR in dB (data range = the "
        "ground-truth volume's maximum), SSIM averaged over slices (7x7 window), NMSE over the volume; "
        "`fg` = within the foreground mask.",
        "",
    ]
    if protocol is not None:
        lines += [f"protocol: {protocol} — {_PROTOCOLS.get(protocol, protocol)}", ""]
    # the through-plane gradient error (slice_gradient_error) when any method has one (volumes of 2+ slices)
    gradient = any(math.isfinite(e.get("slice_gradient_error", math.nan)) for e in summary.values())
    lines += [
        "| task | method | volumes | PSNR | SSIM | NMSE | PSNR fg | SSIM fg | NMSE fg |"
        + (" slice grad. err. |" if gradient else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gradient else ""),
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
        if gradient:
            cells.append(_fmt(e["slice_gradient_error"], e["slice_gradient_error_std"], 4))
        label = f"{task} [fastmri]" if protocol == "fastmri" else task  # never mistaken for simulated rows
        lines.append(f"| {label} | {method} | {e['volumes']} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).as_posix()})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report_md(path: Path, **kwargs: Any) -> None:
    """Write :func:`render_markdown` atomically."""
    atomic_write_text(path, render_markdown(**kwargs))


@dataclass(frozen=True)
class MethodScores:
    """One method's scores over the evaluated volumes: the mean and the sample standard deviation of every
    metric (PSNR in dB, SSIM, NMSE; ``*_fg`` within the foreground mask; ``NaN`` when undefined), the number
    of volumes and the seconds spent reconstructing them."""

    method: str
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    nmse: float
    nmse_std: float
    psnr_fg: float
    psnr_fg_std: float
    ssim_fg: float
    ssim_fg_std: float
    nmse_fg: float
    nmse_fg_std: float
    volumes: int
    seconds: float
    slice_gradient_error: float = float("nan")  # through-plane gradient error (medrecon.evaluate.metrics)
    slice_gradient_error_std: float = float("nan")

    @classmethod
    def from_summary(cls, method: str, entry: dict[str, Any]) -> MethodScores:
        """From one entry of :func:`summarize`."""
        names = [k for k in cls.__dataclass_fields__ if k != "method"]
        return cls(method=method, **{k: entry.get(k, float("nan")) for k in names})


@dataclass
class Report:
    """An evaluation as data: what ``report.json``, ``metrics.csv`` and ``report.md`` hold.

    Attributes:
        task: the task's name.
        summary: per method, :func:`summarize`'s entry (``report.json``'s ``methods``).
        rows: one :class:`MetricRow` per volume and method (``metrics.csv``).
        items: volumes scored.
        config: what was evaluated and how (methods, sampler, seed, selection, spacing, ...), names only.
        notes: sentences for the report (methods left out, excluded records, NaN voxels, spacing).
        failed: volumes that could not be evaluated: ``{"id", "method", "reason", "detail"}``.
        excluded: records of the selection that prepare rejected.
        nonfinite: NaN-voxel counts over the scored volumes (see :func:`write_report_json`).
        figures: PNG panels written, relative to the output folder.
        protocol: ``simulated`` or ``fastmri`` when stated (see :func:`write_report_json`).
    """

    task: str
    summary: dict[str, dict[str, Any]]
    rows: list[MetricRow]
    items: int
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)
    nonfinite: dict[str, Any] | None = None
    figures: list[str] = field(default_factory=list)
    protocol: str | None = None

    @property
    def methods(self) -> dict[str, MethodScores]:
        """Per method, its :class:`MethodScores` (in the order evaluated)."""
        return {name: MethodScores.from_summary(name, entry) for name, entry in self.summary.items()}

    def as_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return report_data(**self._fields())

    def table(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.csv`` as dicts, one per volume and method (e.g. for ``pandas.DataFrame``)."""
        return [row.as_dict() for row in self.rows]

    def markdown(self) -> str:
        """The text of ``report.md``."""
        return render_markdown(
            task=self.task,
            summary=self.summary,
            items=self.items,
            notes=self.notes,
            figures=self.figures,
            protocol=self.protocol,
        )

    def write(self, out: Path) -> None:
        """Write ``metrics.csv``, ``report.json`` and ``report.md`` into the folder ``out`` (atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(out / "metrics.csv", self.rows)
        write_report_json(out / "report.json", **self._fields())
        atomic_write_text(out / "report.md", self.markdown())

    def _fields(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "summary": self.summary,
            "items": self.items,
            "config": self.config,
            "notes": self.notes,
            "failed": self.failed,
            "excluded": self.excluded,
            "nonfinite": self.nonfinite,
            "protocol": self.protocol,
        }
