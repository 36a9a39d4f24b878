"""The bundled sample scan, the demo archive it becomes, and data_manifests/demo.jsonl."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from omegaconf import OmegaConf

from medrecon import prepare
from medrecon.cli import main
from medrecon.io.archive import load_item
from medrecon.manifest import read_manifest
from medrecon.sample import materialise_demo_archive, sample_volume, template_volume

DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "demo.jsonl"


@pytest.fixture(scope="module")
def template():
    return template_volume()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return materialise_demo_archive(tmp_path_factory.mktemp("demo"))


def test_template_asset(template):
    assert template.shape == (197, 233, 189) and template.array.dtype == np.float32
    assert template.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert 0 <= template.array.min() and template.array.max() == 255


@pytest.mark.parametrize("resolution", [2, 3])
def test_sample_volume_grid_is_exact(template, resolution):
    volume = sample_volume(resolution)
    f = resolution
    assert volume.array.dtype == np.float32
    assert volume.shape[0] % 8 == 0 and volume.shape[1] % 8 == 0
    assert volume.spacing == pytest.approx((f, f, f))
    # nothing of the brain is cropped away: block means keep the total
    assert volume.array.sum() * f**3 == pytest.approx(template.array.sum(), rel=1e-5)
    # each new voxel is the mean of the f^3 template voxels whose centres it is the centre of
    to_template = np.linalg.inv(template.affine) @ volume.affine
    for index in ([10, 20, 15], np.unravel_index(np.argmax(volume.array), volume.shape)):
        centre = (to_template @ [*index, 1])[:3]
        lo = np.rint(centre - (f - 1) / 2).astype(int)
        np.testing.assert_allclose(centre - lo, (f - 1) / 2, atol=1e-9)
        block = template.array[lo[0] : lo[0] + f, lo[1] : lo[1] + f, lo[2] : lo[2] + f]
        assert volume.array[tuple(index)] == pytest.approx(block.mean(), rel=1e-5)


@pytest.mark.parametrize("bad", [1.5, 0, 5, "two"])
def test_resolution_must_be_a_whole_supported_number(bad):
    with pytest.raises(ValueError, match="resolution_mm"):
        sample_volume(bad)


def test_demo_archive(demo):
    volume = sample_volume(2)
    assert len(demo.dicom_files) == volume.shape[2] and demo.nifti.is_file()
    assert demo.dicom_dir == demo.root / "dicom" / "mni_t1"
    ds = pydicom.dcmread(demo.dicom_files[0])
    assert (str(ds.PatientName), ds.PatientID, ds.Modality) == ("Anonymous^Demo", "DEMO", "MR")
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]
    assert "RescaleSlope" not in ds and len(ds.RealWorldValueMappingSequence) == 1  # MR: no Modality LUT


def test_demo_manifest_is_what_prepare_writes(demo, capsys):
    manifest = demo.root / "manifest.jsonl"
    cfg = {"input": str(demo.root), "manifest": str(manifest)}
    cfg["split"] = {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0, "by": "patient"}
    assert prepare.run(OmegaConf.create(cfg)) == 0
    assert manifest.read_text() == DEMO_MANIFEST.read_text()
    records = {r.format: r for r in read_manifest(DEMO_MANIFEST, root=demo.root)}
    assert set(records) == {"dicom", "nifti"} and all(r.ok for r in records.values())
    from_dicom, from_nifti = load_item(records["dicom"]), load_item(records["nifti"])
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    assert np.max(np.abs(from_dicom.array - from_nifti.array)) <= 255 / 130000 + 1e-4


def test_cli_sample_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample-data", "out=demo", "resolution_mm=4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no outputs/ or .hydra/
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["dicom", "nifti"]
    assert len(list((tmp_path / "demo" / "dicom" / "mni_t1").iterdir())) == sample_volume(4).shape[2]
    assert main(["sample-data", "out=x", "resolution_mm=1.5"]) == 2
    assert main(["sample-data"]) == 2
