"""What a viewer should draw for a TID 1500 report: its planar groups, read with pydicom.

The viewer test derives its expectations from the SR under test, so it checks any
report (a phantom's, or one the pipeline wrote) without knowing how it was built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

# Concept names (PS3.16): DCM 126010 "Imaging Measurements", DCM 125007 "Measurement
# Group", DCM 112040 "Tracking Unique Identifier", SCT 363698007 "Finding Site",
# SCT 42798000 "Area".
IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_UNIQUE_IDENTIFIER = ("112040", "DCM")
FINDING_SITE = ("363698007", "SCT")
AREA = ("42798000", "SCT")


@dataclass(frozen=True)
class PlanarFinding:
    """One planar measurement group (TID 1410) of a report.

    Attributes
    ----------
    tracking_uid : str
        Tracking Unique Identifier of the group.
    finding_site : str or None
        Code meaning of the group's Finding Site.
    area_mm2 : float or None
        Value of the group's Area NUM.
    referenced_sop_instance_uid : str
        The image that the group's SCOORD lies on.
    """

    tracking_uid: str
    finding_site: str | None
    area_mm2: float | None
    referenced_sop_instance_uid: str


def concept(item: Dataset) -> tuple[str, str]:
    """Return ``(CodeValue, CodingSchemeDesignator)`` of a content item's concept name."""
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodeValue), str(name.CodingSchemeDesignator)


def measurement_groups(report: Dataset) -> Iterator[Dataset]:
    """Yield the Measurement Group containers under Imaging Measurements."""
    for container in report.ContentSequence:
        if container.ValueType != "CONTAINER" or concept(container) != IMAGING_MEASUREMENTS:
            continue
        for group in container.ContentSequence:
            if group.ValueType == "CONTAINER" and concept(group) == MEASUREMENT_GROUP:
                yield group


def planar_finding(group: Dataset) -> PlanarFinding | None:
    """Return the group as a :class:`PlanarFinding`, or None when it has no 2-D SCOORD."""
    items = list(group.ContentSequence)
    scoords = [item for item in items if item.ValueType == "SCOORD"]
    if not scoords:
        return None

    image = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
    tracking_uids = [
        str(item.UID) for item in items if item.ValueType == "UIDREF"
        and concept(item) == TRACKING_UNIQUE_IDENTIFIER
    ]
    sites = [
        str(item.ConceptCodeSequence[0].CodeMeaning) for item in items
        if item.ValueType == "CODE" and concept(item) == FINDING_SITE
    ]
    areas = [
        float(item.MeasuredValueSequence[0].NumericValue) for item in items
        if item.ValueType == "NUM" and concept(item) == AREA
    ]
    return PlanarFinding(
        tracking_uid=tracking_uids[0] if tracking_uids else "",
        finding_site=sites[0] if sites else None,
        area_mm2=areas[0] if areas else None,
        referenced_sop_instance_uid=str(image.ReferencedSOPInstanceUID),
    )


def planar_findings(sr_path: Path) -> list[PlanarFinding]:
    """Return the planar groups of the SR file in document order."""
    report = pydicom.dcmread(sr_path)
    findings = (planar_finding(group) for group in measurement_groups(report))
    return [finding for finding in findings if finding is not None]


def instance_numbers(image_paths: Iterable[Path]) -> dict[str, int]:
    """Map SOPInstanceUID to InstanceNumber for the given image files (headers only)."""
    numbers = {}
    for path in image_paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        numbers[str(header.SOPInstanceUID)] = int(header.InstanceNumber)
    return numbers
