"""Synthetic whole-body PET/CT phantom with ground truth.

The phantom is analytic anatomy (ellipsoids, cylinders, capsules and cut planes) painted
into a label map whose labels are fine sites of the project vocabulary, so the anatomical
site of every body voxel is known. About 330 leaf sites of all eight body regions (326 for
seeds 0 to 7) can contain a lesion: left and right organs, Couinaud liver segments, lung segments,
every vertebra from C1 to L5, all 24 ribs, and nodal stations of the neck, mediastinum,
abdomen and pelvis. Body proportions, sex, organ positions, lesion sites, sizes and
uptake vary with the seed, and one seed always gives the same pixel data.

Grids, like a scanner's:

- CT: 256 x 256 pixels of 2 mm, 3 mm slices, from above the vertex to mid-thigh
  (about 330 to 370 slices), HU, head first supine;
- PET: 128 x 128 pixels of 4 mm, 4 mm slices, offset from the CT grid, in Bq/ml decay
  corrected to the series start, with an F-18 FDG radiopharmaceutical sequence and the
  patient's weight, so that SUV (body weight) is computable;
- SEG: binary, one segment per lesion, numbered from 1 in ``truth.json`` order, on the
  CT instances.

Entry points
------------
``generate_study(out_dir, seed, lesions)``
    Write CT, PET, SEG and ``truth.json`` and return a :class:`Truth`.
``build_phantom_volumes(seed, lesions)``
    Build the same CT (HU) and PET (Bq/ml and SUV) arrays in memory, without DICOM, with
    the label map (``volumes.anatomy.labels``, site ids in ``volumes.anatomy.site_ids``)
    and grid affines. ``volumes.as_volumes()`` returns them as ``dicom.volume.Volume``
    objects with the UIDs that ``generate_study`` writes for the same seed.
``sample_lesion(site_id, rng, sampler=None)``
    Draw a lesion (centre, diameter, SUVmax, HU) inside a leaf site, on the anatomy of
    seed 0 unless a sampler (``build_anatomy(seed).sampler``) is given; pass such lesions
    to ``build_phantom_volumes`` to render them. ``phantom_sites()`` lists the sites that
    can hold a lesion.

``truth.json``::

    {"lesions": [{"segment_number": 1, "site_id": "liver_segment_4a",
                  "code": {"value": ..., "scheme": "SCT", "meaning": ...},
                  "centroid_mm": [x, y, z], "diameter_mm": d, "suv_max": s}]}

``centroid_mm`` is the sphere centre in LPS millimetres and the centre of a CT voxel of
the lesion's site, and at least half of the lesion's CT voxels lie in that site;
``suv_max`` is the largest SUV that the PET files encode inside the lesion.
"""

from __future__ import annotations

from dicom.phantom.lesions import LesionSpec, SiteSampler, sample_lesion
from dicom.phantom.study import Truth, TruthLesion, generate_study
from dicom.phantom.volumes import (
    PhantomAnatomy,
    PhantomVolumes,
    build_anatomy,
    build_phantom_volumes,
    default_anatomy,
)
from dicom.phantom.writer import StudyUids


def phantom_sites(seed: int = 0) -> list[str]:
    """Return the vocabulary site ids that can hold a lesion in the phantom of ``seed``."""
    anatomy = default_anatomy() if seed == 0 else build_anatomy(seed)
    return anatomy.sampler.eligible_sites()


__all__ = [
    "LesionSpec",
    "PhantomAnatomy",
    "PhantomVolumes",
    "SiteSampler",
    "StudyUids",
    "Truth",
    "TruthLesion",
    "build_anatomy",
    "build_phantom_volumes",
    "default_anatomy",
    "generate_study",
    "phantom_sites",
    "sample_lesion",
]
