"""The wheel carries everything an installed medrecon needs: conf/, the sample scan and the demo weights."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_runs_without_the_checkout(tmp_path):
    pytest.importorskip("hatchling")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("medrecon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "medrecon/conf/train.yaml",
        "medrecon/conf/task/sr4x.yaml",
        "medrecon/conf/experiment/demo_sr4x.yaml",
        "medrecon/assets/mni_icbm152_t1_09a.nii.gz",
        "medrecon/assets/NOTICE.md",
        "medrecon/assets/weights/demo_sr4x.safetensors",
    ):
        assert needed in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import medrecon.cli as c; print(c.__file__); print(c.conf_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    module_file, conf = probe.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(conf) == site / "medrecon" / "conf"
    job = subprocess.run(
        [sys.executable, "-m", "medrecon", "train", "--cfg", "job", "manifest=m.jsonl", "out=o", "task=mri_r4"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert "MRITask" in job.stdout and "acceleration: 4" in job.stdout
