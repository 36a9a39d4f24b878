"""Reading and writing scans: DICOM series, NIfTI volumes, fastMRI-layout k-space HDF5."""
