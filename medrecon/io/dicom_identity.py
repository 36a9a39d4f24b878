"""Patient and study identity for a derived DICOM series, read from the source's header at write time.

A derived series that a PACS files under the right patient must carry the source's Patient and General Study
attributes. medrecon never keeps them in memory between reading and writing (``Volume.meta`` holds UIDs only):
:func:`read_source_header` opens one file of the source series again, without pixel data, just before the
derived series is written, and keeps only the attributes listed here.

Two modes (``IDENTITY_MODES``), chosen by the writer's ``identity`` argument (``dicom_identity=`` on the
command line):

- ``source`` (default): ``IDENTITY_KEYWORDS`` are copied from the source header (absent ones stay absent,
  type-2 ones are written empty), and the derived series joins the source's study and frame of reference.
- ``empty``: a research export. Nothing that identifies the patient or links back to the source study is
  written: the patient and study attributes are empty, the Study and Frame of Reference UIDs are new, and no
  source UID is referenced.

``CONTEXT_KEYWORDS`` (body part, laterality, patient position) describe the anatomy rather than the person and
are copied in both modes.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from medrecon.io.dicom_header import quiet_pydicom
from medrecon.io.errors import Reason, RejectedInput

IDENTITY_MODES = ("source", "empty")

# Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study modules (PS3.3 C.7.1.1,
# C.7.1.3, C.7.2.1, C.7.2.2, C.7.2.3); StudyInstanceUID is handled with the other UIDs
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "ProcedureCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)
# type-2 attributes of those modules: written empty when the source lacks them (and in ``empty`` mode)
REQUIRED_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
CONTEXT_KEYWORDS = ("BodyPartExamined", "Laterality", "PatientPosition")


def check_identity_mode(mode: str) -> str:
    """``mode`` when it is one of ``IDENTITY_MODES``, else ValueError naming the allowed values."""
    if mode not in IDENTITY_MODES:
        raise ValueError(f"dicom_identity={mode!r} is not one of {', '.join(IDENTITY_MODES)}")
    return mode


def read_source_header(path: str | Path, *, series_uid: str | None, study_uid: str | None) -> Dataset:
    """The identity and context attributes of one source file (``IDENTITY_KEYWORDS`` + ``CONTEXT_KEYWORDS``).

    Args:
        path: a file of the source series (read with ``stop_before_pixels=True``).
        series_uid, study_uid: the source Volume's UIDs (``meta["dicom"]``); the file must carry the same ones,
            so a file replaced since the series was read is not mistaken for it.

    Returns:
        A Dataset holding only the listed attributes the file has, text values decoded (its character set no
        longer applies; the writer chooses the one it writes).

    Raises:
        RejectedInput: ``unreadable`` when the file, or one of the attributes to copy, cannot be read or
            parsed (a damaged element the series reader never needed).
        ValueError: the file belongs to another series. Messages carry no tag text and no file name.
    """
    with quiet_pydicom():  # pydicom's value warnings would quote patient data
        try:  # pydicom parses elements when they are first used: every read below may fail on a damaged file
            header = dcmread(path, stop_before_pixels=True)
            same = not (series_uid and str(header.get("SeriesInstanceUID", "")) != series_uid) and not (
                study_uid and str(header.get("StudyInstanceUID", "")) != study_uid
            )
            if same:
                header.decode()
                kept = Dataset()
                for keyword in (*IDENTITY_KEYWORDS, *CONTEXT_KEYWORDS):
                    if keyword in header:
                        kept[keyword] = header[keyword]
        except Exception as err:  # noqa: BLE001 - whatever pydicom raises, the header is unreadable
            raise RejectedInput(
                Reason.UNREADABLE,
                f"the source series' patient and study attributes cannot be read again ({type(err).__name__})",
            ) from err
    if not same:
        raise ValueError("the source file no longer belongs to the series that was read")
    return kept


__all__ = [
    "CONTEXT_KEYWORDS",
    "IDENTITY_KEYWORDS",
    "IDENTITY_MODES",
    "REQUIRED_EMPTY",
    "check_identity_mode",
    "read_source_header",
]
