"""DICOM network services, volumes, segmentations and Structured Reports of the worker."""

from pydicom import config as _pydicom_config

# pydicom logs invalid values read from a file together with the value, and such a
# value can be a patient's name or birth date. The worker checks the values it uses
# itself, so read-time validation stays quiet.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
