"""Evaluate checkpoints on the template's held-out slab and on real scans unlike it: one markdown table per task.

    python scripts/results_table.py --checkpoint runs/demo_sr4x/last.safetensors \\
        --checkpoint runs/demo_mri_r4/last.safetensors [--supervised runs/sup_sr4x/last.safetensors] \\
        [--set sampler.steps=10 --set samples=4 --set denoise:guidance=none] [--out results] [--reuse]
    # PYTHONPATH=. in a checkout

For every checkpoint (its task is read from it with ``medrecon info``) and every data set, one
``medrecon evaluate`` runs in a subprocess, in turns:

- ``template``: the held-out slab of the bundled template. ``medrecon sample-data`` materialises the demo
  archive (``OUT/data/template``, once) and ``data_manifests/demo.jsonl`` is its manifest; only its NIfTI record
  is kept (the DICOM series holds the same volume, and scoring it twice would fake a spread).
  ``slice_split`` stays ``auto``: the slabs the checkpoint was trained without.
- ``unlike``: the real scans of ``medrecon.evaluate.unlike`` (built by ``scripts/unlike_scans.py`` into
  ``OUT/data/unlike``, once), all in the ``test`` split, whole volumes (``slice_split=null``).

``--supervised [TASK=]FILE`` passes ``supervised_checkpoint=FILE`` to the evaluations of that task (method
``supervised``); ``--set KEY=VALUE`` adds an evaluate override to every run, ``--set TASK:KEY=VALUE`` to one
task's. Outputs: ``OUT/<task>/<data set>/`` (each evaluation's report.json, metrics.csv, report.md, figures,
``command.txt``, ``stdout.log``), ``OUT/results.md`` (also printed) and ``OUT/results.json``.

The tables: methods (as the reports name them) x data sets, PSNR and SSIM as mean ± sample std over volumes
(``report.json``; one volume has no spread and shows the mean alone), the best value per column in bold; per
unlike scan PSNR / SSIM of every method (``metrics.csv``); a line on where diffusion loses; the figure panels;
and the exact commands.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecon.evaluate.report import read_metrics_csv
from medrecon.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = ROOT / "data_manifests" / "demo.jsonl"
TASK_ORDER = ("sr4x", "mri_r4", "denoise", "thick_slices")
DATASETS = ("template", "unlike")
DATASET_TITLES = {"template": "template, held-out slab", "unlike": "unlike scans"}
DATASET_ARGS = {"template": ["split=test"], "unlike": ["split=test", "slice_split=null"]}
DEFAULT_SETS = {"figures.volumes": "8"}  # a panel for every unlike scan
EXIT_PARTIAL = 3  # medrecon evaluate: some volumes failed, the rest are scored
DIFFUSION = "diffusion"


@dataclass
class Model:
    """One task's checkpoints and what ``medrecon info`` says about the diffusion one."""

    task: str
    checkpoint: Path
    card: dict[str, Any]
    supervised: Path | None = None


@dataclass
class Run:
    """One ``medrecon evaluate`` of one task on one data set, and what it left."""

    task: str
    dataset: str
    args: list[str]
    out: Path
    code: int | None = None
    report: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def command(self) -> str:
        return "medrecon " + shlex.join(self.args)


def medrecon(args: list[str], log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m medrecon ARGS`` (output to ``log`` when given, else captured)."""
    cmd = [sys.executable, "-m", "medrecon", *args]
    if log is None:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    with open(log, "w", encoding="utf-8") as fh:
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, check=False)


def last_line(text: str) -> str:
    """The last line of a command's output that is not Hydra's stack-trace hint."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    return lines[-1] if lines else "no output"


def read_card(checkpoint: Path) -> dict[str, Any]:
    """``medrecon info checkpoint=FILE format=json``; SystemExit naming the file when it is refused."""
    done = medrecon(["info", f"checkpoint={checkpoint}", "format=json"])
    if done.returncode != 0:
        raise SystemExit(f"{checkpoint}: medrecon info failed: {last_line(done.stderr)}")
    return json.loads(done.stdout)


def split_task(value: str) -> tuple[str | None, str]:
    """``TASK=VALUE`` -> ``(TASK, VALUE)``; a bare ``VALUE`` -> ``(None, VALUE)``."""
    head, sep, tail = value.partition("=")
    if sep and head and "/" not in head and "." not in head:
        return head, tail
    return None, value


def overrides(sets: list[str], task: str) -> dict[str, str]:
    """The evaluate overrides of ``task``: defaults, then ``KEY=VALUE``, then ``TASK:KEY=VALUE`` (last wins)."""
    merged = dict(DEFAULT_SETS)
    scoped = []
    for item in sets:
        scope, sep, rest = item.partition(":")
        if sep and "=" not in scope:
            if scope == task:
                scoped.append(rest)
            continue
        key, _, value = item.partition("=")
        merged[key] = value
    for item in scoped:
        key, _, value = item.partition("=")
        merged[key] = value
    return merged


def template_manifest(folder: Path) -> Path:
    """The demo archive in ``folder`` (materialised once) and its manifest of the NIfTI record alone."""
    manifest = folder / "template.jsonl"
    if not (folder / "nifti").is_dir():
        done = medrecon(["sample-data", f"out={folder}"])
        if done.returncode != 0:
            raise SystemExit(f"medrecon sample-data failed: {done.stderr.strip()}")
    lines = [line for line in DEMO_MANIFEST.read_text().splitlines() if json.loads(line)["format"] == "nifti"]
    manifest.write_text("\n".join(lines) + "\n")
    read_manifest(manifest)  # every path exists and the records are valid
    return manifest


def unlike_manifest(folder: Path) -> Path:
    """The unlike-scan archive in ``folder`` (built once by ``scripts/unlike_scans.py``) and its manifest."""
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import unlike_scans

        if unlike_scans.main([str(folder)]) != 0:
            raise SystemExit(f"building the unlike-scan archive in {folder} failed")
    return manifest


def labels(manifest: Path) -> dict[str, str]:
    """Volume id -> a readable name: the DICOM series' folder or the NIfTI file's stem."""
    names = {}
    for record in read_manifest(manifest):
        first = Path(record.paths[0])
        names[record.id] = first.parent.name if record.format == "dicom" else first.name.split(".")[0]
    return names


def plan(models: list[Model], manifests: dict[str, Path], sets: list[str], out: Path) -> list[Run]:
    """One run per task and data set, the exact ``medrecon evaluate`` arguments of each."""
    runs = []
    for model in models:
        for dataset, manifest in manifests.items():
            run_out = out / model.task / dataset
            args = [
                "evaluate",
                f"manifest={manifest}",
                f"checkpoint={model.checkpoint}",
                f"out={run_out}",
                *DATASET_ARGS[dataset],
            ]
            if model.supervised is not None:
                args.append(f"supervised_checkpoint={model.supervised}")
            args += [f"{k}={v}" for k, v in overrides(sets, model.task).items()]
            runs.append(Run(model.task, dataset, args, run_out))
    return runs


def execute(run: Run, reuse: bool) -> None:
    """Run one evaluation (or reuse its report when the same command already wrote one) and read it."""
    run.out.mkdir(parents=True, exist_ok=True)
    stamp = run.out / "command.txt"
    report = run.out / "report.json"
    if reuse and report.is_file() and stamp.is_file() and stamp.read_text().strip() == run.command:
        run.code = 0
        print(f"[{run.task}/{run.dataset}] reusing {report}", file=sys.stderr)
    else:
        report.unlink(missing_ok=True)
        stamp.write_text(run.command + "\n")
        print(f"[{run.task}/{run.dataset}] {run.command}", file=sys.stderr)
        run.code = medrecon(run.args, log=run.out / "stdout.log").returncode
    if run.code not in (0, EXIT_PARTIAL) or not report.is_file():
        run.error = f"exit {run.code}: {last_line((run.out / 'stdout.log').read_text(errors='replace'))}"
        return
    run.report = json.loads(report.read_text())
    run.rows = read_metrics_csv(run.out / "metrics.csv")


def fmt(stats: dict[str, Any], metric: str, digits: int) -> str:
    """``mean ± std`` (the mean alone for one volume); ``n/a`` when missing."""
    mean = stats.get(metric)
    if mean is None:
        return "n/a"
    if int(stats.get("volumes", 0)) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stats.get(f'{metric}_std') or 0.0:.{digits}f}"


def best(values: dict[str, float | None]) -> set[str]:
    """The keys with the highest value (ties included)."""
    finite = {k: v for k, v in values.items() if v is not None}
    if not finite:
        return set()
    top = max(finite.values())
    return {k for k, v in finite.items() if v == top}


def methods_of(runs: list[Run]) -> list[str]:
    """Every method the reports name, in report order (diffusion last)."""
    names: list[str] = []
    for run in runs:
        for name in (run.report or {}).get("methods", {}):
            if name not in names:
                names.append(name)
    return sorted(names, key=lambda n: n == DIFFUSION)


def main_table(runs: list[Run]) -> list[str]:
    """Methods x data sets, PSNR and SSIM, best per column in bold."""
    methods = methods_of(runs)
    head = ["method"]
    for run in runs:
        head += [f"{DATASET_TITLES[run.dataset]}: PSNR (dB)", "SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    winners = {}
    for run in runs:
        stats = (run.report or {}).get("methods", {})
        for metric in ("psnr", "ssim"):
            winners[run.dataset, metric] = best({m: stats.get(m, {}).get(metric) for m in methods})
    for method in methods:
        cells = [method]
        for run in runs:
            stats = (run.report or {}).get("methods", {}).get(method, {})
            for metric, digits in (("psnr", 2), ("ssim", 4)):
                text = fmt(stats, metric, digits) if run.report else "not run"
                bold = method in winners[run.dataset, metric]
                cells.append(f"**{text}**" if bold else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_scan_table(run: Run, names: dict[str, str]) -> list[str]:
    """One row per volume of ``run``: PSNR / SSIM of every method, the best PSNR in bold."""
    methods = methods_of([run])
    lines = [
        "| scan | slices | " + " | ".join(f"{m}: PSNR / SSIM" for m in methods) + " |",
        "|---|---:" + "|---:" * len(methods) + "|",
    ]
    ids = list(dict.fromkeys(r["id"] for r in run.rows))
    for vid in ids:
        rows = {r["method"]: r for r in run.rows if r["id"] == vid}
        top = best({m: rows[m]["psnr"] if m in rows else None for m in methods})
        cells = [names.get(vid, vid), str(next(iter(rows.values()))["slices"])]
        for m in methods:
            if m not in rows:
                cells.append("n/a")
                continue
            text = f"{rows[m]['psnr']:.2f} / {rows[m]['ssim']:.4f}"
            cells.append(f"**{text}**" if m in top else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def losses(runs: list[Run], names: dict[str, dict[str, str]]) -> list[str]:
    """Where diffusion is not the best: per data set (mean PSNR / SSIM) and per scan (PSNR)."""
    notes = []
    for run in runs:
        stats = (run.report or {}).get("methods", {})
        if DIFFUSION not in stats:
            continue
        title = DATASET_TITLES[run.dataset]
        for metric, unit, digits in (("psnr", " dB", 2), ("ssim", "", 4)):
            others = {
                m: s.get(metric) for m, s in stats.items() if m != DIFFUSION and s.get(metric) is not None
            }
            ours = stats[DIFFUSION].get(metric)
            if not others or ours is None:
                continue
            rival = max(others, key=lambda m: others[m])
            if others[rival] > ours:
                notes.append(
                    f"{title}, mean {metric.upper()}: diffusion {ours:.{digits}f}{unit} < {rival} "
                    f"{others[rival]:.{digits}f}{unit} ({ours - others[rival]:+.{digits}f})"
                )
        behind = []
        ids = list(dict.fromkeys(r["id"] for r in run.rows))
        for vid in ids:
            rows = {r["method"]: r["psnr"] for r in run.rows if r["id"] == vid}
            if DIFFUSION not in rows or len(rows) < 2:
                continue
            rival = max((m for m in rows if m != DIFFUSION), key=lambda m: rows[m])
            if rows[rival] > rows[DIFFUSION]:
                label = names[run.dataset].get(vid, vid)
                behind.append(f"{label} ({rows[DIFFUSION] - rows[rival]:+.2f} dB vs {rival})")
        if len(ids) > 1:
            kept = sum(1 for vid in ids if any(r["id"] == vid and r["method"] == DIFFUSION for r in run.rows))
            notes.append(
                f"{title}: diffusion below the best other method in PSNR on {len(behind)} of {kept} "
                f"volume(s)" + (": " + ", ".join(behind) if behind else "")
            )
    return notes or ["diffusion is the best method in every column and on every volume"]


def model_line(model: Model) -> str:
    """What the diffusion checkpoint is (``medrecon info``): network, budget, data."""
    card = model.card
    train = card.get("training") or {}
    parts = [
        f"`{model.checkpoint.name}` ({card.get('objective', 'diffusion')})",
        f"{card.get('parameters', 0):,} parameters, channels {card.get('network_options', {}).get('channels')}",
        f"step {card.get('step')} of {card.get('planned_steps')}, batch {train.get('batch_size')}, "
        f"patch {train.get('patch_size')}, axis {train.get('axis')}",
    ]
    data = card.get("data")
    if isinstance(data, dict) and data.get("volumes") is not None:
        parts.append(
            f"trained on {data.get('volumes')} volume(s), {data.get('items')} training slice(s)/patch(es)"
        )
    if model.supervised is not None:
        parts.append(f"supervised: `{model.supervised.name}`")
    return "; ".join(parts)


def run_line(run: Run) -> str:
    """How an evaluation ran: sampler, guidance, samples, device, seconds, volumes, slices."""
    cfg = (run.report or {}).get("config", {})
    sampler = cfg.get("sampler") or {}
    slices = sum(r["slices"] for r in run.rows if r["method"] == (methods_of([run]) or [""])[0])
    volumes = len({r["id"] for r in run.rows})
    return (
        f"{DATASET_TITLES[run.dataset]}: {volumes} volume(s), {slices} slice(s) scored; diffusion sampler "
        f"{sampler.get('name')} {sampler.get('steps')} steps, guidance {(cfg.get('guidance') or {}).get('name')}, "
        f"{cfg.get('samples')} sample(s) averaged, {cfg.get('precision')} on {cfg.get('device')}, "
        f"{cfg.get('seconds')} s"
    )


def figure_label(path: Path, names: dict[str, str]) -> str:
    """``<scan name> slice N`` for an evaluate panel ``<id>_sliceNNN.png``."""
    vid, _, index = path.stem.rpartition("_slice")
    return f"{names.get(vid, vid)} slice {int(index)}" if vid and index.isdigit() else path.stem


def task_section(model: Model, runs: list[Run], names: dict[str, dict[str, str]], out: Path) -> list[str]:
    lines = [f"## {model.task}", "", f"Model: {model_line(model)}.", ""]
    done = [r for r in runs if r.report is not None]
    for run in runs:
        if run.report is None:
            lines.append(f"- {DATASET_TITLES[run.dataset]}: not evaluated ({run.error})")
    if done:
        lines += main_table(done) + [""]
        lines += [f"- {run_line(r)}" for r in done]
        lines += ["", "Where diffusion loses:", ""] + [f"- {note}" for note in losses(done, names)]
    unscored = [
        f"- {DATASET_TITLES[run.dataset]}: {names[run.dataset].get(item['id'], item['id'])} ({item['reason']})"
        for run in done
        for item in run.report.get("failed") or []
    ]
    if unscored:
        lines += ["", "Not scored:", ""] + unscored
    for run in done:
        if run.dataset == "unlike" and run.rows:
            lines += ["", f"Per scan ({DATASET_TITLES[run.dataset]}):", ""] + per_scan_table(
                run, names[run.dataset]
            )
    figures = [
        (run.dataset, figure_label(p, names[run.dataset]), p.relative_to(out))
        for run in done
        for p in sorted((run.out / "figures").glob("*.png"))
    ]
    if figures:
        lines += ["", "Figures: " + ", ".join(f"[{d}: {label}]({p.as_posix()})" for d, label, p in figures)]
    return lines + [""]


def render(
    models: list[Model], runs: list[Run], names: dict[str, dict[str, str]], out: Path, argv: list[str]
) -> str:
    lines = ["# Results", ""]
    for model in models:
        lines += task_section(model, [r for r in runs if r.task == model.task], names, out)
    lines += ["## Commands", "", "```bash", "python scripts/results_table.py " + shlex.join(argv)]
    lines += [r.command for r in runs] + ["```", ""]
    return "\n".join(lines)


def task_key(model: Model) -> tuple[int, str]:
    return (TASK_ORDER.index(model.task) if model.task in TASK_ORDER else len(TASK_ORDER), model.task)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", action="append", type=Path, required=True, help="a diffusion checkpoint"
    )
    parser.add_argument(
        "--supervised", action="append", default=[], help="[TASK=]FILE: a supervised checkpoint"
    )
    parser.add_argument(
        "--set", action="append", default=[], dest="sets", help="[TASK:]KEY=VALUE for evaluate"
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma list of template, unlike")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results)")
    parser.add_argument(
        "--template-dir", type=Path, default=None, help="demo archive (default OUT/data/template)"
    )
    parser.add_argument(
        "--unlike-dir", type=Path, default=None, help="unlike scans (default OUT/data/unlike)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep a report written by the same command")
    parser.add_argument("--dry-run", action="store_true", help="print the evaluate commands and stop")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if unknown := sorted(set(datasets) - set(DATASETS)):
        parser.error(f"--datasets: unknown {unknown}; choose from {list(DATASETS)}")
    models: dict[str, Model] = {}
    for path in args.checkpoint:
        card = read_card(path.resolve())
        task = str(card["task_name"])
        if task in models:
            parser.error(f"two checkpoints of task {task}: {models[task].checkpoint} and {path}")
        models[task] = Model(task, path.resolve(), card)
    for value in args.supervised:
        task, path = split_task(value)
        file = Path(path).resolve()
        task = task or str(read_card(file)["task_name"])
        if task not in models:
            parser.error(f"--supervised {value}: no --checkpoint of task {task}")
        models[task].supervised = file
    ordered = sorted(models.values(), key=task_key)

    builders = {"template": template_manifest, "unlike": unlike_manifest}
    folders = {"template": args.template_dir, "unlike": args.unlike_dir}
    manifests = {}
    for d in datasets:
        folder = (folders[d] or out / "data" / d).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        manifests[d] = builders[d](folder)
    runs = plan(ordered, manifests, args.sets, out)
    if args.dry_run:
        print("\n".join(r.command for r in runs))
        return 0
    for run in runs:
        execute(run, args.reuse)
    names = {d: labels(m) for d, m in manifests.items()}
    text = render(ordered, runs, names, out, argv)
    (out / "results.md").write_text(text)
    summary = [
        {
            "task": r.task,
            "dataset": r.dataset,
            "command": r.command,
            "exit": r.code,
            "error": r.error,
            "methods": (r.report or {}).get("methods"),
            "volumes": r.rows,
        }
        for r in runs
    ]
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0 if all(r.report is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
