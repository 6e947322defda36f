"""SUVbw factors against hand calculations, and the reasons when SUV cannot be computed.

Hand values: 5000 Bq/ml, 70 kg, 370 MBq F-18 (half-life 6586.2 s).
START at 60 min: 5000 * 70000 / (370e6 * 2^(-3600/6586.2)) = 1.3817.
ADMIN: 5000 * 70000 / 370e6 = 0.9459.
NONE at 90 min: 5000 * 70000 / (370e6 * 2^(-5400/6586.2)) = 1.6699.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedPETImageStorage

from dicom.suv import SuvResult, compute_suv_factor
from tests.support.series_factory import Geometry, PetDose, pet_series, scan_time_after

CONCENTRATION_BQ_ML = 5000.0


def pet_header(dose: PetDose, acquired: datetime | None = None) -> Dataset:
    """Return one PET instance of a 1-slice series built with ``dose``."""
    values = np.full((1, 4, 4), CONCENTRATION_BQ_ML)
    times = [acquired] if acquired else None
    return pet_series(values, Geometry((1, 4, 4)), dose=dose, acquisition_times=times)[0]


BASE = PetDose(scan_start=scan_time_after(60))


@pytest.mark.parametrize(
    ("dose", "acquired", "expected_suv"),
    [
        (BASE, None, 1.3817),
        (replace(BASE, use_start_datetime=False), None, 1.3817),
        (replace(BASE, decay_correction="ADMIN"), None, 0.9459),
        (replace(BASE, decay_correction="NONE"), scan_time_after(90), 1.6699),
        (replace(BASE, scan_start=scan_time_after(75)), scan_time_after(60), 1.3817),
        (
            replace(
                BASE,
                injection=datetime(2024, 1, 1, 23, 30),
                scan_start=datetime(2024, 1, 2, 0, 30),
                use_start_datetime=False,
            ),
            datetime(2024, 1, 2, 0, 30),
            1.3817,
        ),
    ],
    ids=[
        "start-datetime",
        "start-time-on-series-date",
        "admin",
        "none-acquisition",
        "series-time-rewritten",
        "injection-before-midnight",
    ],
)
def test_suv_factor_matches_hand_value(dose: PetDose, acquired: datetime | None, expected_suv: float) -> None:
    result = compute_suv_factor(pet_header(dose, acquired))

    assert result.reason is None
    assert result.factor is not None
    assert result.factor * CONCENTRATION_BQ_ML == pytest.approx(expected_suv, abs=1e-4)


@pytest.mark.parametrize(
    ("dose", "reason"),
    [
        (replace(BASE, weight_kg=None), "Patient's Weight (0010,1030) is missing or zero"),
        (replace(BASE, weight_kg=0.0), "Patient's Weight (0010,1030) is missing or zero"),
        (replace(BASE, dose_bq=None), "Radionuclide Total Dose (0018,1074) is missing or zero"),
        (replace(BASE, half_life_s=None), "Radionuclide Half Life (0018,1075) is missing or zero"),
        (replace(BASE, injection=None), "the radiopharmaceutical start date and time are missing"),
        (replace(BASE, injection=scan_time_after(61)), "the radiopharmaceutical start is after the acquisition start"),
        (
            replace(BASE, corrected_image=("DECY",)),
            "the PET series is not attenuation corrected (CorrectedImage lacks ATTN)",
        ),
        (
            replace(BASE, units="CNTS"),
            "PET Units CNTS without a vendor SUV scale factor cannot be converted to SUV",
        ),
        (replace(BASE, units="PROPCNTS"), "PET Units PROPCNTS cannot be converted to SUV; BQML is required"),
        (replace(BASE, decay_correction="DECAY"), "Decay Correction DECAY is not START, ADMIN or NONE"),
    ],
    ids=[
        "no-weight",
        "zero-weight",
        "no-dose",
        "no-half-life",
        "no-injection-time",
        "injection-after-scan",
        "not-attenuation-corrected",
        "counts-without-vendor-factor",
        "unknown-units",
        "unknown-decay-correction",
    ],
)
def test_suv_factor_missing_gives_reason(dose: PetDose, reason: str) -> None:
    assert compute_suv_factor(pet_header(dose)) == SuvResult(factor=None, reason=reason)


def test_suv_factor_of_gml_is_one() -> None:
    assert compute_suv_factor(pet_header(replace(BASE, units="GML"))) == SuvResult(factor=1.0)


def test_suv_factor_uses_philips_counts_scale() -> None:
    header = pet_header(replace(BASE, units="CNTS"))
    block = header.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000276")

    assert compute_suv_factor(header) == SuvResult(factor=pytest.approx(0.000276))


def test_suv_factor_enhanced_pet_not_supported() -> None:
    header = pet_header(BASE)
    header.SOPClassUID = EnhancedPETImageStorage

    result = compute_suv_factor(header)

    assert result.factor is None
    assert result.reason == "SUV of Enhanced PET instances is not supported; send the PET as PET Image Storage"
