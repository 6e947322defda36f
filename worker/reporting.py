"""Turn an analysis result into TID 1500 Structured Report files in the reports folder.

Each analysis writes three documents: the report as Comprehensive 3D SR (sent
first); the same content in the configured fallback SOP class, for destinations
that do not accept Comprehensive 3D SR; and an outline document with only the
planar groups, whose labels OHIF 3 shows with the finding site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import generate_uid

from worker.config import Settings
from worker.localizer_cache import checkpoint_hashes

if TYPE_CHECKING:
    from dicom.study import StudyInputs

LOGGER = logging.getLogger(__name__)

ALGORITHM_NAME = "HCL-AL hierarchical CLIP localisation"
SR_SERIES_NUMBER = 9001


@dataclass(frozen=True)
class ReportFile:
    """A Structured Report written to disk."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    fallback_path: Path
    fallback_sop_instance_uid: str
    outline_path: Path
    outline_sop_instance_uid: str


def package_version() -> str:
    """Return the installed version of this package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hclal-worker")
    except PackageNotFoundError:
        return "0+unknown"


def tracking_uid(study_uid: str, inputs: "StudyInputs", lesion) -> str:  # noqa: ANN001
    """Return the lesion's Tracking UID: the same in every re-analysis of the same SEG."""
    from dicom.sr import lesion_tracking_uid

    return lesion_tracking_uid(str(inputs.seg.SOPInstanceUID), lesion.segment_number, lesion.component)


def device_uid(settings: Settings) -> str:
    """Return the Device Observer UID of this installation (derived from its AE title)."""
    return generate_uid(entropy_srcs=["hclal-device", settings.ae_title])


def fallback_sop_class(settings: Settings):  # noqa: ANN201
    """Return the SR SOP class used when a destination rejects Comprehensive 3D SR."""
    from dicom.sr import SrSopClass

    return SrSopClass(settings.sr_fallback_sop_class)


def _candidate(site, probability: float):  # noqa: ANN001, ANN202
    from pydicom.sr.coding import Code

    from dicom.sr import SiteCandidate, laterality_code

    return SiteCandidate(
        code=Code(site.code.value, site.code.scheme, site.code.meaning),
        probability=float(probability),
        laterality=laterality_code(site.laterality),
    )


def build_report_inputs(settings: Settings, context, inputs: "StudyInputs", predictions, localizer, sop_class):  # noqa: ANN001, ANN201
    """Collect what :func:`dicom.sr.build_measurement_report` needs for one analysis."""
    from dicom.sr import AlgorithmInfo, LesionFinding, PredecessorReport, ReportInputs

    findings = []
    for lesion, prediction in zip(inputs.lesions, predictions, strict=True):
        site = _candidate(prediction.site, prediction.probability)
        ranked = prediction.coarse_topk if prediction.coarse_only else prediction.fine_topk
        alternatives = [
            _candidate(localizer.vocabulary.site(site_id), probability)
            for site_id, probability in ranked
            if site_id != prediction.site_id
        ]
        findings.append(
            LesionFinding(
                lesion=lesion,
                tracking_uid=tracking_uid(context.study_instance_uid, inputs, lesion),
                site=site,
                alternatives=alternatives,
                uncertain=bool(prediction.uncertain),
            )
        )

    predecessor = None
    if context.predecessor is not None:
        earlier = context.predecessor
        predecessor = PredecessorReport(
            sop_class_uid=earlier.sop_class_uid,
            sop_instance_uid=earlier.sop_instance_uid,
            series_instance_uid=earlier.series_instance_uid,
            study_instance_uid=context.study_instance_uid,
        )
    algorithm = AlgorithmInfo(
        name=ALGORITHM_NAME,
        version=package_version(),
        checkpoint_hashes=checkpoint_hashes(localizer),
        device_uid=device_uid(settings),
        device_name=f"HCL-AL worker {settings.ae_title}",
    )
    return ReportInputs(
        ct_images=inputs.ct_headers,
        ct_affine=inputs.ct.affine,
        seg=inputs.seg,
        findings=findings,
        algorithm=algorithm,
        pet_images=inputs.pet_headers,
        sop_class=sop_class,
        series_number=SR_SERIES_NUMBER,
        predecessor=predecessor,
    )


def write_report(settings: Settings, context, inputs: "StudyInputs", predictions, localizer) -> ReportFile:  # noqa: ANN001
    """Write the report, its fallback variant and its outline document to the reports folder.

    The fallback (same content in ``HCLAL_SR_FALLBACK_SOP_CLASS``) and the outline
    document (planar groups only, in the fallback class, its own series) get SOP
    Instance UIDs derived from the report's, so a rebuild gives the same UIDs.
    """
    from dataclasses import replace

    from dicom.sr import OUTLINE_SERIES_DESCRIPTION, SrSopClass, build_measurement_report, save_report

    report_inputs = build_report_inputs(
        settings, context, inputs, predictions, localizer, SrSopClass.COMPREHENSIVE_3D
    )
    primary = build_measurement_report(report_inputs)
    primary_uid = str(primary.SOPInstanceUID)
    fallback = build_measurement_report(
        replace(
            report_inputs,
            sop_class=fallback_sop_class(settings),
            series_instance_uid=str(primary.SeriesInstanceUID),
            sop_instance_uid=derived_uid(primary_uid, "fallback"),
        )
    )
    outline = build_measurement_report(
        replace(
            report_inputs,
            sop_class=fallback_sop_class(settings),
            outlines_only=True,
            series_instance_uid=derived_uid(str(primary.SeriesInstanceUID), "outline-series"),
            sop_instance_uid=derived_uid(primary_uid, "outline"),
            series_number=SR_SERIES_NUMBER + 1,
            series_description=OUTLINE_SERIES_DESCRIPTION,
        )
    )
    paths = [save_report(document, settings.reports_dir) for document in (primary, fallback, outline)]
    LOGGER.info(
        "analysis %d: SR %s written with %d lesions (fallback %s, outlines %s)", context.analysis_id,
        primary_uid, len(report_inputs.findings), fallback.SOPInstanceUID, outline.SOPInstanceUID,
    )
    return ReportFile(
        path=paths[0],
        sop_instance_uid=primary_uid,
        series_instance_uid=str(primary.SeriesInstanceUID),
        sop_class_uid=str(primary.SOPClassUID),
        fallback_path=paths[1],
        fallback_sop_instance_uid=str(fallback.SOPInstanceUID),
        outline_path=paths[2],
        outline_sop_instance_uid=str(outline.SOPInstanceUID),
    )


def derived_uid(uid: str, purpose: str) -> str:
    """Return a UID derived from ``uid`` for a companion document (same input, same UID)."""
    return generate_uid(entropy_srcs=[uid, purpose])
