"""Real scans unlike the training template, taken offline from the test data of installed packages.

A model trained on the bundled template (one skull-stripped, population-average T1 brain at 2 mm) has to be
tried on scans it has nothing in common with: other contrasts, other anatomy, CT, other resolutions, single
2D images. nibabel and pydicom, both medrecon dependencies, ship a few real scans inside their wheels for
their own tests. ``build_unlike_archive(out)`` copies them into an archive folder that ``medrecon prepare``
reads like any other; nothing is downloaded (the files are found beside the installed packages' modules, not
through ``pydicom.data.get_testdata_file``, which fetches files that are not bundled).

The scans (``SCANS``), their provenance and licences:

- ``nibabel_example4d`` — ``nibabel/tests/data/example4d.nii.gz``: a real 4D MRI time series (FSL 3.3),
  128 x 96 x 24 voxels of 2 x 2 x 2.2 mm, 2 frames; the first frame is written as a 3D NIfTI (medrecon
  refuses a real 4th dimension). An EPI-like contrast with low resolution, not a T1 template.
  nibabel, MIT licence (nibabel's COPYING: "the nibabel package, including all examples ... is covered by
  the MIT license").
- ``nibabel_anatomical`` — ``nibabel/tests/data/anatomical.nii``: a spatially normalised (SPM) T1 brain of
  33 x 41 x 25 voxels at 2 mm, big-endian int16. Copied byte for byte. nibabel, MIT licence.
- ``pydicom_mr_small`` — ``pydicom/data/test_files/MR_small.dcm``: one MR slice, 64 x 64, downsized by the
  pydicom authors from NEMA's WG04 sample ``MR1_UNC``. pydicom, MIT licence; its test-file README: "I believe
  there is no restriction on using any of these files in this manner"; names replaced by
  ``CompressedSamples^MR1``.
- ``pydicom_examples_overlay`` — ``pydicom/data/test_files/examples_overlay.dcm``: one Siemens MR slice,
  484 x 300 (stored as 300 rows x 484 columns) at 0.72 mm, from GDCM's ``MR-SIEMENS-DICOM-WithOverlays.dcm``
  with cropped pixel data; the patient name is a placeholder. pydicom, MIT licence.
- ``pydicom_ct_small`` — ``pydicom/data/test_files/CT_small.dcm``: one CT slice, 128 x 128 at 0.66 mm (HU via
  the rescale), downsized from NEMA's WG04 ``CT1_UNC``. pydicom, MIT licence.

A second, disjoint set, ``VALIDATION_SCANS``, is for choosing settings and recipes on unlike data without
touching the five above (``build_unlike_archive(out, VALIDATION_SCANS)``, ``scripts/unlike_scans.py --set
validation``): nibabel's Philips ``phantom_EPI_asc_CLEAR_2_1.PAR/REC`` (an EPI phantom, 64 x 64 x 9 at 3.75 x
3.75 x 8 mm, first dynamic), ``functional.nii`` (an EPI brain, 17 x 21 x 3 at 4 x 4 x 8 mm, first frame) and
``small.mnc`` (a MINC brain, 18 x 28 x 29 at 9 x 8 x 7 mm): small and coarse, another check, not a benchmark.

Left out (checked on nibabel 5.4 / pydicom 3.0): nibabel's ``example_nifti2.nii.gz`` (a crop of
``example4d``), ``reoriented/resampled_anat_moved.nii`` (resampled
copies of ``anatomical.nii``), ``0.dcm`` / ``1.dcm`` and ``nicom/tests/data`` (diffusion mosaics, two files of
identical pixels, empty or all-zero pixel data); pydicom's other MR files are re-encodings of ``MR_small.dcm``
and the rest are not scans (RGB, ultrasound, RT objects, reports).

The scans are public test data whose headers the packages' authors already anonymised; they are copied as
they are and stay on the user's machine (medrecon redistributes none of them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

ARCHIVE_FOLDER = "scans"
SOURCES_FILE = "SOURCES.md"


@dataclass(frozen=True)
class UnlikeScan:
    """One bundled scan: where it lies inside an installed package and what it is.

    Attributes:
        name: the scan's name in the archive (folder of a DICOM file, stem of a NIfTI file).
        package: the installed package that ships it (``nibabel`` or ``pydicom``).
        source: its path relative to the package folder.
        kind: ``dicom`` (copied into ``dicom/<name>/``), ``nifti`` (copied to ``nifti/<name>.nii[.gz]``),
            ``nifti_frame0`` (the first frame of a 4D NIfTI, written as ``nifti/<name>.nii.gz``), or a format
            medrecon does not read, converted by nibabel to ``nifti/<name>.nii.gz`` with its affine:
            ``parrec_frame0`` (a Philips PAR/REC pair, first dynamic; ``source`` is the ``.PAR``) and ``minc``.
        modality: ``MR`` or ``CT``.
        description: what the scan is (contrast, size, spacing).
        provenance: where its authors took it from, and its licence.
    """

    name: str
    package: str
    source: str
    kind: str
    modality: str
    description: str
    provenance: str


SCANS: tuple[UnlikeScan, ...] = (
    UnlikeScan(
        "nibabel_example4d",
        "nibabel",
        "tests/data/example4d.nii.gz",
        "nifti_frame0",
        "MR",
        "first frame of a 4D MRI time series, 128 x 96 x 24, 2 x 2 x 2.2 mm",
        "nibabel test data (FSL 3.3 NIfTI); nibabel, MIT licence",
    ),
    UnlikeScan(
        "nibabel_anatomical",
        "nibabel",
        "tests/data/anatomical.nii",
        "nifti",
        "MR",
        "spatially normalised (SPM) T1 brain, 33 x 41 x 25, 2 mm",
        "nibabel test data; nibabel, MIT licence",
    ),
    UnlikeScan(
        "pydicom_mr_small",
        "pydicom",
        "data/test_files/MR_small.dcm",
        "dicom",
        "MR",
        "one MR slice, 64 x 64 (downsized)",
        "pydicom test file, downsized from NEMA WG04 MR1_UNC; pydicom, MIT licence",
    ),
    UnlikeScan(
        "pydicom_examples_overlay",
        "pydicom",
        "data/test_files/examples_overlay.dcm",
        "dicom",
        "MR",
        "one Siemens MR slice, 300 x 484 pixels, 0.72 mm",
        "pydicom test file, from GDCM's MR-SIEMENS-DICOM-WithOverlays.dcm (cropped); pydicom, MIT licence",
    ),
    UnlikeScan(
        "pydicom_ct_small",
        "pydicom",
        "data/test_files/CT_small.dcm",
        "dicom",
        "CT",
        "one CT slice, 128 x 128 (downsized), 0.66 mm",
        "pydicom test file, downsized from NEMA WG04 CT1_UNC; pydicom, MIT licence",
    ),
)


VALIDATION_SCANS: tuple[UnlikeScan, ...] = (
    UnlikeScan(
        "nibabel_phantom_epi",
        "nibabel",
        "tests/data/phantom_EPI_asc_CLEAR_2_1.PAR",
        "parrec_frame0",
        "MR",
        "EPI phantom (Philips PAR/REC), first dynamic, 64 x 64 x 9, 3.75 x 3.75 x 8 mm",
        "nibabel test data; nibabel, MIT licence",
    ),
    UnlikeScan(
        "nibabel_functional",
        "nibabel",
        "tests/data/functional.nii",
        "nifti_frame0",
        "MR",
        "first frame of an EPI brain series, 17 x 21 x 3, 4 x 4 x 8 mm",
        "nibabel test data; nibabel, MIT licence",
    ),
    UnlikeScan(
        "nibabel_small_minc",
        "nibabel",
        "tests/data/small.mnc",
        "minc",
        "MR",
        "MINC brain volume, 18 x 28 x 29, 9 x 8 x 7 mm",
        "nibabel test data; nibabel, MIT licence",
    ),
)


@dataclass(frozen=True)
class UnlikeArchive:
    """What ``build_unlike_archive`` wrote.

    Attributes:
        root: the output folder (holds ``SOURCES.md`` and the archive folder).
        archive: the folder to give ``medrecon prepare`` (``root / "scans"``).
        written: scan name -> the file written (absolute path).
        missing: ``(scan name, reason)`` for the scans whose package or file is not installed.
    """

    root: Path
    archive: Path
    written: dict[str, Path] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it; ``None`` when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def source_path(scan: UnlikeScan) -> Path | None:
    """The scan's file inside its installed package; ``None`` when the package or the file is missing."""
    folder = package_folder(scan.package)
    if folder is None:
        return None
    path = folder / scan.source
    return path if path.is_file() else None


def destination(scan: UnlikeScan, archive: Path, source: Path) -> Path:
    """Where ``scan`` goes inside ``archive``: ``dicom/<name>/<file>`` or ``nifti/<name>.nii[.gz]``."""
    if scan.kind == "dicom":
        return archive / "dicom" / scan.name / source.name
    suffix = ".nii" if scan.kind == "nifti" and source.name.endswith(".nii") else ".nii.gz"
    return archive / "nifti" / f"{scan.name}{suffix}"


def write_scan(scan: UnlikeScan, source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` (the first frame of a 4D NIfTI as a 3D image with the same header)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if scan.kind == "nifti_frame0":
        img = nib.load(str(source))
        if len(img.shape) != 4:
            raise ValueError(f"{scan.source}: expected a 4D NIfTI, got shape {img.shape}")
        nib.save(img.slicer[..., 0], str(dest))
    elif scan.kind in ("parrec_frame0", "minc"):
        import numpy as np

        img = nib.load(str(source))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if scan.kind == "parrec_frame0" and data.ndim == 4:
            data = data[..., 0]
        nib.save(nib.Nifti1Image(data, img.affine), str(dest))
    else:
        shutil.copyfile(source, dest)


def sources_table(archive: UnlikeArchive, scans: tuple[UnlikeScan, ...] = SCANS) -> str:
    """``SOURCES.md``: one row per scan with its package version, source file, sha256, description and licence."""
    lines = [
        "# Unlike scans: provenance",
        "",
        "Copied offline from the test data of installed packages by `medrecon.evaluate.unlike` "
        "(its docstring has the details). Nothing was downloaded.",
        "",
        "| name | modality | package | source | sha256 (source file) | what | provenance, licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for scan in scans:
        src = source_path(scan)
        if scan.name not in archive.written or src is None:
            continue
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        version = _version(scan.package)
        lines.append(
            f"| {scan.name} | {scan.modality} | {scan.package} {version} | `{scan.source}` | {digest} | "
            f"{scan.description} | {scan.provenance} |"
        )
    for name, reason in archive.missing:
        lines.append(f"| {name} | | | | | not written: {reason} | |")
    return "\n".join(lines) + "\n"


def build_unlike_archive(out: str | Path, scans: tuple[UnlikeScan, ...] = SCANS) -> UnlikeArchive:
    """Write the bundled scans found on this machine to ``out/scans`` and their provenance to ``out/SOURCES.md``.

    Args:
        out: the output folder (created; files of a previous build are overwritten).
        scans: ``SCANS`` (the test set the results report) or ``VALIDATION_SCANS`` (for choosing settings).

    Returns:
        What was written and which scans were missing (a package not installed, or a distribution that
        strips test data): the archive holds the others.
    """
    root = Path(out).resolve()
    result = UnlikeArchive(root=root, archive=root / ARCHIVE_FOLDER)
    for scan in scans:
        src = source_path(scan)
        if src is None:
            result.missing.append((scan.name, f"{scan.package}/{scan.source} is not installed"))
            continue
        dest = destination(scan, result.archive, src)
        write_scan(scan, src, dest)
        result.written[scan.name] = dest
    (root / SOURCES_FILE).write_text(sources_table(result, scans), encoding="utf-8")
    return result


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
