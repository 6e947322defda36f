"""TID 1500 Measurement Report that names the anatomical site of every lesion.

One SR document per analysis, built with highdicom. Each lesion gets two
measurement groups that share its Tracking Identifier and Tracking Unique
Identifier (TID 4108):

- a volumetric ROI group (TID 1411) that references the lesion's SEG segment
  and the segmentation's source series, with the finding site, the volume and
  the SUV statistics;
- a planar ROI group (TID 1410) with a closed 2-D SCOORD POLYLINE on the CT
  image nearest to the lesion centroid and its area. OHIF 3 and other web
  viewers draw only this kind of group.

Site probabilities are TID 300 NUM items named (122157, DCM, "Probability")
with UCUM unit ``1``, each qualified by the Finding Site it rates. The first
is the chosen site (the group's own Finding Site), the others are the
alternatives in decreasing order. TID 1419 allows any number of TID 300
measurements with a Finding Site concept modifier, so readers that do not
know this convention still get valid, self-describing items.

The report contains no SCOORD3D items, so the fallback SOP classes (Enhanced SR,
Comprehensive SR) carry exactly the same content tree as Comprehensive 3D SR.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    generate_uid,
)

from dicom.contour import outline_lesion

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "HCL-AL lesion sites"
# The outline document: planar groups only, one label per lesion that OHIF 3 can show in full.
OUTLINE_SERIES_DESCRIPTION = "HCL-AL lesion outlines"

# UTF-8 (PS3.3 C.12.1.1.2, ISO_IR 192) encodes any patient name the source
# images carry, whatever their own Specific Character Set.
SPECIFIC_CHARACTER_SET = "ISO_IR 192"

# Concept names and units (PS3.16), from pydicom's code tables where they
# have them. The SUV unit is the Code Value that CID 85 lists.
PROBABILITY = codes.DCM.Probability
UNITLESS = codes.UCUM.NoUnits
MILLILITER = Code("ml", "UCUM", "milliliter")
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter
SUV_BODY_WEIGHT = Code("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
SUV = codes.DCM.StandardizedUptakeValue
MAXIMUM = codes.SCT.Maximum
MEAN = codes.SCT.Mean
PEAK = codes.DCM.PeakValueWithinROI
LESION = codes.SCT.Lesion
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding
UNCERTAIN = codes.SCT.Uncertain
PET_CT_FDG_WHOLE_BODY = codes.SCT.PETCTFDGImagingOfWholeBody

LATERALITY_CODES = {
    "left": codes.SCT.Left,
    "right": codes.SCT.Right,
    "bilateral": codes.SCT.Bilateral,
}


class SrSopClass(str, enum.Enum):
    """SR SOP classes the worker can write; values are the names used in settings."""

    COMPREHENSIVE_3D = "comprehensive3d"
    ENHANCED = "enhanced"
    COMPREHENSIVE = "comprehensive"

    @property
    def uid(self) -> str:
        """SOP Class UID of this storage class (PS3.4 B.5)."""
        return _SOP_CLASS_UIDS[self]


_SOP_CLASS_UIDS = {
    SrSopClass.COMPREHENSIVE_3D: Comprehensive3DSRStorage,
    SrSopClass.ENHANCED: EnhancedSRStorage,
    SrSopClass.COMPREHENSIVE: ComprehensiveSRStorage,
}

_SR_CLASSES: dict[SrSopClass, type[hd.sr.Comprehensive3DSR]] = {
    SrSopClass.COMPREHENSIVE_3D: hd.sr.Comprehensive3DSR,
    SrSopClass.ENHANCED: hd.sr.EnhancedSR,
    SrSopClass.COMPREHENSIVE: hd.sr.ComprehensiveSR,
}


class LesionLike(Protocol):
    """The fields of ``dicom.lesions.LesionMeasurement`` that the report uses."""

    segment_number: int
    component: int
    centroid_mm: Sequence[float]
    volume_ml: float
    suv_max: float | None
    suv_mean: float | None
    suv_peak: float | None
    mask: np.ndarray
    mask_origin: Sequence[int]


@dataclass(frozen=True)
class SiteCandidate:
    """An anatomical site and the model's probability that the lesion lies there.

    Attributes
    ----------
    code : pydicom.sr.coding.Code
        Coded anatomic location (usually SCT).
    probability : float
        Probability in [0, 1].
    laterality : pydicom.sr.coding.Code or None
        Laterality modifier of the site (CID 244); see :func:`laterality_code`.
    """

    code: Code
    probability: float
    laterality: Code | None = None

    @classmethod
    def from_site(cls, site: Any, probability: float) -> SiteCandidate:
        """Build a candidate from a vocabulary ``Site``.

        Parameters
        ----------
        site : models.vocabulary.Site
            Any object with ``code.value``, ``code.scheme``, ``code.meaning``
            and ``laterality`` (``"left"``, ``"right"``, ``"bilateral"`` or None).
        probability : float
            The model's probability for the site.
        """
        code = Code(str(site.code.value), str(site.code.scheme), str(site.code.meaning))
        return cls(code=code, probability=float(probability), laterality=laterality_code(site.laterality))


@dataclass(frozen=True)
class LesionFinding:
    """One lesion with its localisation result.

    Attributes
    ----------
    lesion : LesionLike
        Measurements and mask of the lesion on the CT grid.
    tracking_uid : str
        Tracking Unique Identifier shared by the lesion's two groups; keep it
        stable across re-analyses of the same lesion.
    site : SiteCandidate
        The site the model chose.
    alternatives : Sequence[SiteCandidate]
        Other likely sites, most probable first.
    uncertain : bool
        Whether the chosen site's probability is below the configured threshold.
    """

    lesion: LesionLike
    tracking_uid: str
    site: SiteCandidate
    alternatives: Sequence[SiteCandidate] = ()
    uncertain: bool = False

    @property
    def tracking_identifier(self) -> str:
        """Human-readable Tracking Identifier of the lesion."""
        return f"Lesion {self.lesion.segment_number}.{self.lesion.component}"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The device and algorithm named in the observer context and each group.

    Attributes
    ----------
    name, version : str
        Algorithm name and version (TID 4019).
    checkpoint_hashes : Sequence[str]
        Model checkpoints as ``"coarse sha256:<hex>"`` strings; written as
        Algorithm Parameters.
    device_uid : str
        Device Observer UID (TID 1004); keep it stable per installation.
    device_name, manufacturer : str
        Device Observer Name and Manufacturer.
    """

    name: str
    version: str
    checkpoint_hashes: Sequence[str]
    device_uid: str
    device_name: str = "HCL-AL hospital worker"
    manufacturer: str = "HCL-AL"


@dataclass(frozen=True)
class PredecessorReport:
    """The SR that a re-analysis replaces (Predecessor Documents Sequence)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


@dataclass(frozen=True)
class ReportInputs:
    """Everything :func:`build_measurement_report` writes into one SR.

    Attributes
    ----------
    ct_images : Sequence[pydicom.dataset.Dataset]
        Headers of the CT series (pixel data not needed). The first supplies
        the patient and study attributes.
    ct_affine : numpy.ndarray
        4x4 index-to-LPS matrix of the CT volume the lesion masks lie on.
    seg : pydicom.dataset.Dataset
        The Segmentation whose segments the lesions come from.
    findings : Sequence[LesionFinding]
        One entry per lesion.
    algorithm : AlgorithmInfo
        Device and algorithm identification.
    pet_images : Sequence[pydicom.dataset.Dataset]
        Headers of the PET series the SUVs come from; listed as evidence.
    sop_class : SrSopClass
        Storage class of the document.
    series_instance_uid, sop_instance_uid : str or None
        UIDs of the new SR; new ones are generated when None. Pass the same
        SOP Instance UID to rebuild an identical report for a resend.
    series_number : int
        Series Number of the SR series.
    series_description : str
        Series Description that viewers list the series by.
    predecessor : PredecessorReport or None
        Earlier SR of the same study that this one replaces.
    procedure : pydicom.sr.coding.Code
        Procedure Reported (CID 100).
    outlines_only : bool
        Write only the planar groups (outline, area, finding site). OHIF 3 merges
        the groups that share a Tracking UID into one label of at most five lines,
        with the finding site last, so in the full report the site is cut off; the
        outline document gives each lesion a label that ends with its site.
    """

    ct_images: Sequence[Dataset]
    ct_affine: np.ndarray
    seg: Dataset
    findings: Sequence[LesionFinding]
    algorithm: AlgorithmInfo
    pet_images: Sequence[Dataset] = ()
    sop_class: SrSopClass = SrSopClass.COMPREHENSIVE_3D
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    series_number: int = 9001
    series_description: str = SERIES_DESCRIPTION
    predecessor: PredecessorReport | None = None
    procedure: Code = field(default_factory=lambda: PET_CT_FDG_WHOLE_BODY)
    outlines_only: bool = False


def laterality_code(laterality: str | None) -> Code | None:
    """Return the SCT laterality code (CID 244) for a vocabulary laterality.

    Parameters
    ----------
    laterality : str or None
        ``"left"``, ``"right"``, ``"bilateral"`` (any case), or None/``""``/
        ``"none"`` for an unpaired site.

    Raises
    ------
    ValueError
        For any other value.
    """
    if laterality is None or laterality.strip().lower() in ("", "none", "unpaired"):
        return None
    try:
        return LATERALITY_CODES[laterality.strip().lower()]
    except KeyError:
        raise ValueError(
            f"laterality {laterality!r} is not one of left, right, bilateral or none"
        ) from None


def lesion_tracking_uid(seg_sop_instance_uid: str, segment_number: int, component: int) -> str:
    """Return the Tracking Unique Identifier of one lesion, the same in every analysis.

    The UID is derived from the SEG instance, segment number and connected
    component, so a re-analysis of the same SEG (a new model, late instances)
    tracks the same lesions. A new SEG instance starts new tracking UIDs,
    because its segments need not describe the same lesions.
    """
    # generate_uid joins its entropy sources without a separator, so one
    # string with separators keeps segment 1 component 21 apart from 12 and 1.
    key = f"hclal-lesion/{seg_sop_instance_uid}/{int(segment_number)}/{int(component)}"
    return generate_uid(entropy_srcs=[key])


def _finding_site(candidate: SiteCandidate) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(anatomic_location=candidate.code, laterality=candidate.laterality)


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=list(algorithm.checkpoint_hashes) or None,
    )


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.device_name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _probability_measurements(finding: LesionFinding) -> list[hd.sr.Measurement]:
    candidates = [finding.site, *finding.alternatives]
    return [
        hd.sr.Measurement(
            name=PROBABILITY,
            value=float(candidate.probability),
            unit=UNITLESS,
            finding_sites=[_finding_site(candidate)],
        )
        for candidate in candidates
    ]


def _suv_measurements(lesion: LesionLike) -> list[hd.sr.Measurement]:
    statistics = ((lesion.suv_max, MAXIMUM), (lesion.suv_mean, MEAN), (lesion.suv_peak, PEAK))
    return [
        hd.sr.Measurement(name=SUV, value=float(value), unit=SUV_BODY_WEIGHT, derivation=derivation)
        for value, derivation in statistics
        if value is not None and np.isfinite(value)
    ]


def _qualitative_evaluations(finding: LesionFinding) -> list[hd.sr.QualitativeEvaluation] | None:
    if not finding.uncertain:
        return None
    return [hd.sr.QualitativeEvaluation(name=CERTAINTY_OF_FINDING, value=UNCERTAIN)]


def _segment_source_series(seg: Dataset, ct_series_uid: str) -> str:
    """Return the series the SEG was derived from, or the CT series if it names none."""
    referenced = seg.get("ReferencedSeriesSequence")
    if referenced:
        return str(referenced[0].SeriesInstanceUID)
    return ct_series_uid


def _shared_group_content(finding: LesionFinding, inputs: ReportInputs) -> dict[str, Any]:
    """Return the arguments that a lesion's volumetric and planar groups have in common."""
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid, identifier=finding.tracking_identifier
        ),
        "finding_type": LESION,
        "algorithm_id": _algorithm_identification(inputs.algorithm),
        "finding_sites": [_finding_site(finding.site)],
        "qualitative_evaluations": _qualitative_evaluations(finding),
    }


def _volumetric_group(
    finding: LesionFinding, inputs: ReportInputs
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    lesion = finding.lesion
    source_series = _segment_source_series(inputs.seg, str(inputs.ct_images[0].SeriesInstanceUID))
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=inputs.seg.SOPClassUID,
        sop_instance_uid=inputs.seg.SOPInstanceUID,
        segment_number=int(lesion.segment_number),
        source_series=hd.sr.SourceSeriesForSegmentation(source_series),
    )
    volume = hd.sr.Measurement(
        name=codes.SCT.Volume, value=float(lesion.volume_ml), unit=MILLILITER
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        referenced_segment=segment,
        measurements=[volume, *_suv_measurements(lesion), *_probability_measurements(finding)],
        **_shared_group_content(finding, inputs),
    )


def _planar_group(
    finding: LesionFinding, inputs: ReportInputs
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    lesion = finding.lesion
    outline = outline_lesion(
        lesion.mask, lesion.mask_origin, lesion.centroid_mm, inputs.ct_affine, inputs.ct_images
    )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline.points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=outline.image.SOPClassUID,
            referenced_sop_instance_uid=outline.image.SOPInstanceUID,
        ),
    )
    area = hd.sr.Measurement(
        name=codes.SCT.Area, value=round(outline.area_mm2, 3), unit=SQUARE_MILLIMETER
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=region, measurements=[area], **_shared_group_content(finding, inputs)
    )


def _predecessor_dataset(predecessor: PredecessorReport) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = predecessor.sop_class_uid
    dataset.SOPInstanceUID = predecessor.sop_instance_uid
    dataset.SeriesInstanceUID = predecessor.series_instance_uid
    dataset.StudyInstanceUID = predecessor.study_instance_uid
    return dataset


def _check_inputs(inputs: ReportInputs) -> None:
    if not inputs.ct_images:
        raise ValueError("ReportInputs.ct_images is empty; the report needs the CT series headers")
    if not inputs.findings:
        raise ValueError(
            "ReportInputs.findings is empty; highdicom's TID 1500 Measurement Report needs at "
            "least one measurement group, so skip the report for a study without lesions"
        )
    study_uid = inputs.ct_images[0].StudyInstanceUID
    if inputs.seg.StudyInstanceUID != study_uid:
        raise ValueError(
            f"SEG {inputs.seg.SOPInstanceUID} belongs to study {inputs.seg.StudyInstanceUID}, "
            f"not to the CT study {study_uid}"
        )
    segment_numbers = {int(item.SegmentNumber) for item in inputs.seg.SegmentSequence}
    for finding in inputs.findings:
        if int(finding.lesion.segment_number) not in segment_numbers:
            raise ValueError(
                f"lesion {finding.tracking_identifier} references segment "
                f"{finding.lesion.segment_number}, which SEG {inputs.seg.SOPInstanceUID} does not have"
            )
    if np.asarray(inputs.ct_affine).shape != (4, 4):
        raise ValueError("ReportInputs.ct_affine must be a 4x4 matrix")


def build_measurement_report(inputs: ReportInputs) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of one analysis.

    Parameters
    ----------
    inputs : ReportInputs
        Source headers, lesions with their sites, and document settings.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR or highdicom.sr.EnhancedSR or highdicom.sr.ComprehensiveSR
        The SR document (a pydicom Dataset) in ``inputs.sop_class``: same
        Study Instance UID as the CT, patient and study attributes copied, a
        new series, Specific Character Set ISO_IR 192.

    Raises
    ------
    ValueError
        If the inputs are inconsistent (no CT headers, no lesions, SEG of
        another study, a lesion whose segment the SEG lacks).
    dicom.contour.ContourError
        If a lesion cannot be outlined on any CT image.
    """
    _check_inputs(inputs)

    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for finding in inputs.findings:
        if not inputs.outlines_only:
            groups.append(_volumetric_group(finding, inputs))
        groups.append(_planar_group(finding, inputs))

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(inputs.algorithm),
        procedure_reported=inputs.procedure,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )

    sr_class = _SR_CLASSES[inputs.sop_class]
    previous = [_predecessor_dataset(inputs.predecessor)] if inputs.predecessor else None
    document = sr_class(
        evidence=[*inputs.ct_images, inputs.seg, *inputs.pet_images],
        content=report[0],
        series_instance_uid=inputs.series_instance_uid or generate_uid(),
        series_number=inputs.series_number,
        sop_instance_uid=inputs.sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=inputs.algorithm.manufacturer,
        is_complete=True,
        previous_versions=previous,
        series_description=inputs.series_description,
        manufacturer_model_name=inputs.algorithm.name,
        software_versions=inputs.algorithm.version,
        specific_character_set=SPECIFIC_CHARACTER_SET,
    )
    logger.info(
        "built %s %s in study %s with %d lesions (%d groups)",
        inputs.sop_class.value, document.SOPInstanceUID, document.StudyInstanceUID,
        len(inputs.findings), len(groups),
    )
    return document


def save_report(document: Dataset, reports_dir: Path) -> Path:
    """Write an SR as a DICOM file (PS3.10) to ``reports_dir/<Study UID>/<SOP UID>.dcm``.

    The file is written under a temporary name and renamed, so a reader never
    sees a partial report.

    Returns
    -------
    pathlib.Path
        Path of the written file.
    """
    folder = Path(reports_dir) / str(document.StudyInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{document.SOPInstanceUID}.dcm"
    partial = folder / f"{document.SOPInstanceUID}.dcm.partial"
    document.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)
    return path
