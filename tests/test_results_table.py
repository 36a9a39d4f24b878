"""scripts/results_table.py: evaluate commands per task and data set, tables from the reports, losses named."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import results_table as rt  # noqa: E402

CHECKPOINT = ROOT / "medrecon" / "assets" / "weights" / "demo_sr4x.safetensors"


def _run(dataset, stats, rows):
    """A finished run with a report holding ``stats`` (method -> (psnr, ssim, volumes)) and metric rows."""
    methods = {
        m: {"psnr": p, "psnr_std": 1.0, "ssim": s, "ssim_std": 0.01, "volumes": n}
        for m, (p, s, n) in stats.items()
    }
    run = rt.Run("sr4x", dataset, ["evaluate"], Path("/nowhere"))
    run.report = {"methods": methods, "config": {}, "failed": []}
    run.rows = [{"id": i, "method": m, "slices": 3, "psnr": p, "ssim": s} for i, m, p, s in rows]
    return run


def test_overrides_scope_and_order():
    sets = [
        "sampler.steps=10",
        "denoise:guidance=none",
        "samples=4",
        "denoise:samples=1",
        "figures.volumes=2",
    ]
    assert rt.overrides(sets, "sr4x") == {"figures.volumes": "2", "sampler.steps": "10", "samples": "4"}
    assert rt.overrides(sets, "denoise") == {
        "figures.volumes": "2",
        "sampler.steps": "10",
        "samples": "1",
        "guidance": "none",
    }
    assert rt.split_task("sr4x=/runs/a.safetensors") == ("sr4x", "/runs/a.safetensors")
    assert rt.split_task("runs/a.safetensors") == (None, "runs/a.safetensors")


def test_plan_passes_supervised_only_when_given(tmp_path):
    models = [
        rt.Model("sr4x", Path("/c/sr.safetensors"), {}, supervised=Path("/c/sup.safetensors")),
        rt.Model("mri_r4", Path("/c/mri.safetensors"), {}),
    ]
    manifests = {"template": tmp_path / "t.jsonl", "unlike": tmp_path / "u.jsonl"}
    runs = rt.plan(models, manifests, ["samples=4"], tmp_path)
    assert [(r.task, r.dataset) for r in runs] == [
        ("sr4x", "template"),
        ("sr4x", "unlike"),
        ("mri_r4", "template"),
        ("mri_r4", "unlike"),
    ]
    by = {(r.task, r.dataset): r.args for r in runs}
    assert "supervised_checkpoint=/c/sup.safetensors" in by["sr4x", "unlike"]
    assert not any(a.startswith("supervised_checkpoint") for a in by["mri_r4", "template"])
    assert "slice_split=null" in by["sr4x", "unlike"] and "slice_split=null" not in by["sr4x", "template"]
    assert all("samples=4" in args and "split=test" in args for args in by.values())
    assert runs[0].command.startswith("medrecon evaluate manifest=")


def test_table_bolds_the_best_and_names_where_diffusion_loses():
    template = _run("template", {"tv": (22.0, 0.76, 1), "diffusion": (23.0, 0.78, 1)}, [])
    unlike = _run(
        "unlike",
        {"tv": (29.0, 0.80, 2), "diffusion": (27.0, 0.82, 2)},
        [
            ("a", "tv", 30.0, 0.8),
            ("a", "diffusion", 31.0, 0.9),
            ("b", "tv", 28.0, 0.8),
            ("b", "diffusion", 23.0, 0.7),
        ],
    )
    table = rt.main_table([template, unlike])
    diffusion_row = next(line for line in table if line.startswith("| diffusion"))
    tv_row = next(line for line in table if line.startswith("| tv"))
    assert "**23.00**" in diffusion_row and "**0.7800**" in diffusion_row  # one volume: no spread shown
    assert "**29.00 ± 1.00**" in tv_row and "**0.8200 ± 0.0100**" in diffusion_row
    notes = rt.losses([template, unlike], {"template": {}, "unlike": {"b": "scan_b"}})
    assert any("unlike scans, mean PSNR: diffusion 27.00 dB < tv 29.00 dB (-2.00)" in n for n in notes)
    assert not any("SSIM" in n for n in notes)  # diffusion wins SSIM in both columns
    assert any("on 1 of 2 volume(s): scan_b (-5.00 dB vs tv)" in n for n in notes)
    per_scan = rt.per_scan_table(unlike, {"a": "scan_a"})
    assert any(line.startswith("| scan_a | 3 |") and "**31.00 / 0.9000**" in line for line in per_scan)


def test_no_loss_is_said_so():
    run = _run("template", {"tv": (22.0, 0.76, 1), "diffusion": (23.0, 0.78, 1)}, [])
    assert rt.losses([run], {"template": {}}) == [
        "diffusion is the best method in every column and on every volume"
    ]


def test_dry_run_builds_the_unlike_set_and_prints_the_commands(tmp_path, capsys):
    if not CHECKPOINT.is_file():
        pytest.skip("the bundled demo checkpoint is not in this checkout")
    code = rt.main(
        [
            "--checkpoint",
            str(CHECKPOINT),
            "--datasets",
            "unlike",
            "--set",
            "sampler.steps=2",
            "--out",
            str(tmp_path),
            "--dry-run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    command = out[-1]
    assert command.startswith("medrecon evaluate manifest=") and f"checkpoint={CHECKPOINT}" in command
    assert "slice_split=null" in command and "sampler.steps=2" in command
    assert (tmp_path / "data" / "unlike" / "manifest.jsonl").is_file()
