"""Body-weight SUV factor of a PET series (PS3.3 C.8.9.1 PET Series Module, C.8.9.2 PET Isotope Module).

``SUVbw = C * W / D`` with ``C`` the activity concentration in Bq/ml, ``W`` the
patient weight in g and ``D`` the injected activity in Bq decayed to the time
the image values refer to. Tissue density is taken as 1 g/ml, so SUVbw is
unitless. The factor returned here multiplies the rescaled pixel values.

When the factor cannot be computed, :class:`SuvResult` carries ``None`` and a
reason. No default weight, dose or time is assumed.

NOTE: the attributes are read as the PET Image IOD (PS3.3 A.21) places them.
Enhanced PET instances (PS3.3 A.56) keep corrections and times in other
modules, which this module does not read, so they get ``None`` with a reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import EnhancedPETImageStorage
from pydicom.valuerep import DA, DT, TM

logger = logging.getLogger(__name__)

#: Private creator and element of the Philips SUV scale factor for Units CNTS.
PHILIPS_PRIVATE_CREATOR = "Philips PET Private Group"
PHILIPS_SUV_SCALE_ELEMENT = 0x00
PHILIPS_PRIVATE_GROUP = 0x7053

#: Units (0054,1001) already holding SUVbw values (g/ml).
UNITS_SUV_BODY_WEIGHT = "GML"
UNITS_BECQUEREL_PER_ML = "BQML"
UNITS_COUNTS = "CNTS"

DECAY_START = "START"
DECAY_ADMIN = "ADMIN"
DECAY_NONE = "NONE"

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class SuvResult:
    """Factor from rescaled PET values to SUVbw, or ``None`` with the reason."""

    factor: float | None
    reason: str | None = None


def compute_suv_factor(pet: Dataset) -> SuvResult:
    """Compute the factor from rescaled PET values to body-weight SUV.

    Parameters
    ----------
    pet
        One instance (a header is enough) of the PET series.

    Returns
    -------
    SuvResult
        ``factor`` set, or ``None`` with ``reason`` naming what is missing.

    Note
    ----
    The decay reference time follows Decay Correction (0054,1102):

    - ``START``: values are decay corrected to the acquisition start, taken as
      Series Date/Time. When the Series Time is later than the Acquisition
      Time (some vendors rewrite it on reconstruction), the acquisition
      date and time is used instead.
    - ``ADMIN``: values are decay corrected to the administration time, so
      the dose needs no decay.
    - ``NONE``: values are not decay corrected, so the dose is decayed to the
      Acquisition Date/Time of this instance. Different bed positions then
      have different factors.

    The radiopharmaceutical start is Radiopharmaceutical Start DateTime
    (0018,1078) when present, else Radiopharmaceutical Start Time (0018,1072)
    on the Series Date, moved to the day before when that puts it after the
    scan.
    """
    uid = pet.get("SeriesInstanceUID", "?")
    if pet.get("SOPClassUID") == EnhancedPETImageStorage:
        return _fail(uid, "SUV of Enhanced PET instances is not supported; send the PET as PET Image Storage")
    corrected = [str(value).upper() for value in _as_list(pet.get("CorrectedImage"))]
    if "ATTN" not in corrected:
        return _fail(uid, "the PET series is not attenuation corrected (CorrectedImage lacks ATTN)")

    units = str(pet.get("Units", "")).upper()
    if units == UNITS_SUV_BODY_WEIGHT:
        return SuvResult(factor=1.0)
    if units == UNITS_COUNTS:
        return _philips_counts_factor(pet, uid)
    if units != UNITS_BECQUEREL_PER_ML:
        return _fail(uid, f"PET Units {units or '(missing)'} cannot be converted to SUV; BQML is required")

    weight_kg = _positive_float(pet.get("PatientWeight"))
    if weight_kg is None:
        return _fail(uid, "Patient's Weight (0010,1030) is missing or zero")

    info = _radiopharmaceutical_information(pet)
    if info is None:
        return _fail(uid, "Radiopharmaceutical Information Sequence (0054,0016) is missing")
    dose_bq = _positive_float(info.get("RadionuclideTotalDose"))
    if dose_bq is None:
        return _fail(uid, "Radionuclide Total Dose (0018,1074) is missing or zero")
    half_life_s = _positive_float(info.get("RadionuclideHalfLife"))
    if half_life_s is None:
        return _fail(uid, "Radionuclide Half Life (0018,1075) is missing or zero")

    decay = str(pet.get("DecayCorrection", "")).upper()
    if decay == DECAY_ADMIN:
        return SuvResult(factor=weight_kg * 1000.0 / dose_bq)
    if decay not in (DECAY_START, DECAY_NONE):
        return _fail(uid, f"Decay Correction {decay or '(missing)'} is not START, ADMIN or NONE")

    injection = injection_datetime(pet, info)
    if injection is None:
        return _fail(uid, "the radiopharmaceutical start date and time are missing")
    reference = start_datetime(pet) if decay == DECAY_START else acquisition_datetime(pet)
    if reference is None:
        return _fail(uid, "the series or acquisition date and time are missing")
    elapsed_s = (reference - injection).total_seconds()
    if -SECONDS_PER_DAY < elapsed_s < 0 and not info.get("RadiopharmaceuticalStartDateTime"):
        # Radiopharmaceutical Start Time has no date: an injection before midnight
        # and a scan after it put the injection on the wrong (series) day.
        elapsed_s += SECONDS_PER_DAY
    if elapsed_s < 0:
        return _fail(uid, "the radiopharmaceutical start is after the acquisition start")

    decayed_dose = dose_bq * math.exp(-math.log(2.0) * elapsed_s / half_life_s)
    return SuvResult(factor=weight_kg * 1000.0 / decayed_dose)


def injection_datetime(pet: Dataset, info: Dataset) -> datetime | None:
    """Return the radiopharmaceutical start, preferring the DateTime attribute."""
    if info.get("RadiopharmaceuticalStartDateTime"):
        return _naive(DT(info.RadiopharmaceuticalStartDateTime))
    return _combine(pet.get("SeriesDate"), info.get("RadiopharmaceuticalStartTime"))


def start_datetime(pet: Dataset) -> datetime | None:
    """Return the acquisition start that START decay correction refers to."""
    series = _combine(pet.get("SeriesDate"), pet.get("SeriesTime"))
    acquisition = acquisition_datetime(pet)
    if series is None:
        return acquisition
    if acquisition is not None and series > acquisition:
        return acquisition
    return series


def acquisition_datetime(pet: Dataset) -> datetime | None:
    """Return Acquisition DateTime, or Acquisition Date and Time, of one instance."""
    if pet.get("AcquisitionDateTime"):
        return _naive(DT(pet.AcquisitionDateTime))
    return _combine(pet.get("AcquisitionDate") or pet.get("SeriesDate"), pet.get("AcquisitionTime"))


def _philips_counts_factor(pet: Dataset, uid: str) -> SuvResult:
    try:
        block = pet.private_block(PHILIPS_PRIVATE_GROUP, PHILIPS_PRIVATE_CREATOR)
        value = _positive_float(block[PHILIPS_SUV_SCALE_ELEMENT].value)
    except KeyError:
        value = None
    if value is None:
        return _fail(uid, "PET Units CNTS without a vendor SUV scale factor cannot be converted to SUV")
    return SuvResult(factor=value)


def _radiopharmaceutical_information(pet: Dataset) -> Dataset | None:
    items = pet.get("RadiopharmaceuticalInformationSequence")
    return items[0] if items else None


def _combine(date: object, time: object) -> datetime | None:
    if not date or not time:
        return None
    day = DA(str(date))
    clock = TM(str(time))
    return datetime.combine(day, clock.replace(tzinfo=None))


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and math.isfinite(number) else None


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)  # type: ignore[call-overload]


def _fail(uid: str, reason: str) -> SuvResult:
    logger.warning("no SUV for PET series %s: %s", uid, reason)
    return SuvResult(factor=None, reason=reason)
