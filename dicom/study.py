"""Turn the instances of one PET/CT study into the inputs of the localisation model.

:func:`load_study` reads every header, groups the instances by series, chooses
the CT, PET and SEG series to use, assembles the volumes, converts PET to SUV
and measures the SEG's lesions. The chosen series and the reasons are kept in
:attr:`StudyInputs.choices` so an analysis can be audited.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom.lesions import LesionMeasurement, measure_lesions
from dicom.seg import read_segmentation, referenced_series_uids, segment_masks
from dicom.suv import DECAY_NONE, SuvResult, compute_suv_factor
from dicom.volume import Volume, group_by_series, load_series, read_header

logger = logging.getLogger(__name__)

MODALITY_CT = "CT"
MODALITY_PET = "PT"
MODALITY_SEG = "SEG"


class StudyError(ValueError):
    """The study lacks a usable CT, PET or SEG; the message names what is missing."""


@dataclass
class StudyInputs:
    """Volumes, SUV factor and lesions of one study, ready for localisation."""

    ct: Volume
    pet: Volume | None
    suv: SuvResult
    lesions: list[LesionMeasurement]
    ct_series_uid: str
    pet_series_uid: str | None
    seg: Dataset
    choices: dict[str, dict[str, str]] = field(default_factory=dict)
    ct_headers: list[Dataset] = field(default_factory=list)
    pet_headers: list[Dataset] = field(default_factory=list)


@dataclass(frozen=True)
class _Series:
    uid: str
    modality: str
    headers: list[Dataset]

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.get("FrameOfReferenceUID", ""))


def load_study(
    paths: Iterable[str | Path],
    *,
    seg_series_uid: str | None = None,
    one_lesion_per_segment: bool = False,
) -> StudyInputs:
    """Load the CT, PET and lesions of one study from files or folders.

    Parameters
    ----------
    paths
        DICOM files, or folders searched recursively. Files that are not
        DICOM are skipped with a debug log line.
    seg_series_uid
        The SEG series to measure, e.g. the one whose references completed the
        study. By default the SEG with the newest content date and time.
    one_lesion_per_segment
        Measure each segment as one lesion instead of one lesion per
        26-connected component.

    Raises
    ------
    StudyError
        If there is no SEG (or not the one named) or no CT, or the instances span
        several studies.
    dicom.volume.SeriesError, dicom.seg.SegmentationError
        If a chosen series or the SEG cannot be used.
    """
    series = _group(_read_headers(paths))
    _check_single_study(series)
    choices: dict[str, dict[str, str]] = {}

    seg_series = _choose_seg(series, choices, seg_series_uid)
    seg = read_segmentation(Path(seg_series.first.filename))
    pet_series = _choose_pet(series, choices)
    ct_series = _choose_ct(series, seg, pet_series, choices)

    ct = load_series(ct_series.headers)
    pet, suv = _load_pet(pet_series)
    if pet is not None and pet.frame_of_reference_uid != ct.frame_of_reference_uid:
        raise StudyError(
            f"PET series {pet.series_instance_uid} and CT series {ct.series_instance_uid} use "
            "different frames of reference; registered PET/CT is not supported"
        )

    masks = segment_masks(seg, ct)
    lesions = measure_lesions(
        masks,
        ct,
        pet,
        pet_in_suv=suv.factor is not None,
        one_lesion_per_segment=one_lesion_per_segment,
    )
    return StudyInputs(
        ct=ct,
        pet=pet,
        suv=suv,
        lesions=lesions,
        ct_series_uid=ct.series_instance_uid,
        pet_series_uid=pet.series_instance_uid if pet is not None else None,
        seg=seg,
        choices=choices,
        ct_headers=list(ct_series.headers),
        pet_headers=list(pet_series.headers) if pet_series is not None else [],
    )


def _read_headers(paths: Iterable[str | Path]) -> list[Dataset]:
    headers = []
    for path in _files(paths):
        try:
            headers.append(read_header(path))
        except (InvalidDicomError, OSError) as exc:
            logger.debug("skipped %s: not a readable DICOM file (%s)", path, exc)
    if not headers:
        raise StudyError("no DICOM files were found; pass the folder or files of one study")
    return headers


def _files(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(item for item in path.rglob("*") if item.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise StudyError(f"{path} does not exist; pass existing DICOM files or folders")
    return files


def _group(headers: Sequence[Dataset]) -> list[_Series]:
    return [
        _Series(uid=uid, modality=str(items[0].get("Modality", "")), headers=items)
        for uid, items in group_by_series(headers).items()
    ]


def _check_single_study(series: Sequence[_Series]) -> None:
    studies = {str(item.first.get("StudyInstanceUID", "")) for item in series}
    if len(studies) > 1:
        raise StudyError(f"the files belong to {len(studies)} studies ({sorted(studies)}); pass one study")


def _choose_seg(
    series: Sequence[_Series], choices: dict[str, dict[str, str]], seg_series_uid: str | None
) -> _Series:
    candidates = [item for item in series if item.modality == MODALITY_SEG]
    if not candidates:
        raise StudyError("the study has no SEG (Segmentation) series, so there are no lesions to measure")
    if seg_series_uid is not None:
        chosen = next((item for item in candidates if item.uid == seg_series_uid), None)
        if chosen is None:
            raise StudyError(
                f"SEG series {seg_series_uid} is not among the study's files "
                f"(SEG series found: {', '.join(sorted(item.uid for item in candidates))})"
            )
        reason = "the SEG series named for this analysis"
    else:
        chosen = max(candidates, key=_content_time)
        reason = "the only SEG" if len(candidates) == 1 else f"newest content date/time of {len(candidates)} SEGs"
    if len(chosen.headers) > 1:
        reason += f"; first of {len(chosen.headers)} SEG instances in the series"
    _record(choices, "seg", chosen.uid, reason)
    return chosen


def _choose_pet(series: Sequence[_Series], choices: dict[str, dict[str, str]]) -> _Series | None:
    candidates = [item for item in series if item.modality == MODALITY_PET]
    if not candidates:
        _record(choices, "pet", "", "the study has no PET series, so SUV values are empty")
        return None
    corrected = [item for item in candidates if "ATTN" in _corrected_image(item.first)]
    pool = corrected or candidates
    chosen = max(pool, key=lambda item: len(item.headers))
    if len(candidates) == 1:
        reason = "the only PET"
    elif corrected:
        reason = f"attenuation corrected, most instances of {len(corrected)} corrected PET series"
    else:
        reason = f"no attenuation-corrected PET; most instances of {len(candidates)}"
    _record(choices, "pet", chosen.uid, reason)
    return chosen


def _choose_ct(
    series: Sequence[_Series],
    seg: Dataset,
    pet: _Series | None,
    choices: dict[str, dict[str, str]],
) -> _Series:
    candidates = [item for item in series if item.modality == MODALITY_CT]
    if not candidates:
        raise StudyError("the study has no CT series; the SEG lesions need a CT grid")

    referenced = set(referenced_series_uids(seg))
    chosen, reason = _first_match(candidates, lambda item: item.uid in referenced, "referenced by the SEG")
    if chosen is None and pet is not None:
        chosen, reason = _first_match(
            candidates,
            lambda item: item.frame_of_reference_uid == pet.frame_of_reference_uid,
            "shares the PET frame of reference",
        )
    if chosen is None:
        seg_frame = str(seg.get("FrameOfReferenceUID", ""))
        chosen, reason = _first_match(
            candidates, lambda item: item.frame_of_reference_uid == seg_frame, "shares the SEG frame of reference"
        )
    if chosen is None:
        chosen = max(candidates, key=lambda item: len(item.headers))
        reason = f"most instances of {len(candidates)} CT series; none referenced by the SEG or PET"
    _record(choices, "ct", chosen.uid, reason)
    return chosen


def _first_match(candidates: Sequence[_Series], predicate, reason: str) -> tuple[_Series | None, str]:  # noqa: ANN001
    matches = [item for item in candidates if predicate(item)]
    if not matches:
        return None, ""
    chosen = max(matches, key=lambda item: len(item.headers))
    if len(matches) > 1:
        reason += f"; most instances of {len(matches)} such CT series"
    return chosen, reason


def _load_pet(pet_series: _Series | None) -> tuple[Volume | None, SuvResult]:
    if pet_series is None:
        return None, SuvResult(factor=None, reason="the study has no PET series")
    volume = load_series(pet_series.headers)
    suv = compute_suv_factor(pet_series.first)
    if suv.factor is None:
        return volume, suv

    factors = _slice_factors(volume, pet_series.headers, suv.factor)
    array = volume.array
    array *= factors[:, np.newaxis, np.newaxis]
    return volume, suv


def _slice_factors(volume: Volume, headers: Sequence[Dataset], default: float) -> np.ndarray:
    """Return one SUV factor per slice; they differ only without decay correction (NONE)."""
    decay = str(headers[0].get("DecayCorrection", "")).upper()
    if decay != DECAY_NONE or not volume.sop_instance_uids or len(headers) == 1:
        return np.full(volume.array.shape[0], default, dtype=np.float32)
    by_uid = {str(header.SOPInstanceUID): header for header in headers}
    factors = []
    for uid in volume.sop_instance_uids:
        factor = compute_suv_factor(by_uid[uid]).factor
        factors.append(default if factor is None else factor)
    return np.asarray(factors, dtype=np.float32)


def _corrected_image(header: Dataset) -> list[str]:
    value = header.get("CorrectedImage")
    if value is None:
        return []
    return [str(item).upper() for item in ([value] if isinstance(value, str) else value)]


def _content_time(item: _Series) -> str:
    return f"{item.first.get('ContentDate', '')}{item.first.get('ContentTime', '')}"


def _record(choices: dict[str, dict[str, str]], role: str, uid: str, reason: str) -> None:
    choices[role] = {"series_instance_uid": uid, "reason": reason}
    logger.info("chose %s series %s: %s", role, uid, reason)
