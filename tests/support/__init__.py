"""Helpers shared by tests: DICOM data set builders and real DICOM peers (DCMTK, Orthanc)."""
