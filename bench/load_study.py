"""Time and peak memory of ``load_study`` on a whole-body sized PET/CT study.

The script writes a 600-slice 512x512 CT, a 300-slice 200x200 PET and a SEG
with 20 lesions into a temporary folder, then runs in fresh subprocesses:

- ``load_study`` on the folder;
- a reference: read every CT and PET file with ``pydicom.dcmread`` and stack
  the rescaled slices with ``numpy.stack``, sorted by position.

It prints one JSON line with the seconds and peak resident memory (MB) of
both, their ratios and the targets (10 s, 2048 MB). Run it from the
repository root: ``python bench/load_study.py``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_SECONDS = 10.0
TARGET_PEAK_MB = 2048.0
CT_SHAPE = (600, 512, 512)
PET_SHAPE = (300, 200, 200)
LESIONS = 20


def write_study(folder: Path) -> None:
    """Write the CT, PET and SEG of the benchmark study into ``folder``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pydicom

    from tests.support.series_factory import (
        Geometry,
        SeriesIds,
        ct_series,
        pet_series,
        segmentation,
        write_datasets,
    )

    ids = SeriesIds()
    ct_geometry = Geometry(CT_SHAPE, (1.5, 0.98, 0.98), (-250.0, -250.0, -900.0))
    pet_geometry = Geometry(PET_SHAPE, (3.0, 4.0, 4.0), (-398.0, -398.0, -899.25))
    rng = np.random.default_rng(0)

    labels = np.zeros(CT_SHAPE, dtype=np.uint8)
    centres = np.column_stack(
        [rng.integers(20, 580, LESIONS), rng.integers(150, 360, LESIONS), rng.integers(150, 360, LESIONS)]
    )
    for number, centre in enumerate(centres, start=1):
        low = np.maximum(centre - 8, 0)
        box = tuple(slice(a, a + 17) for a in low)
        grid = np.indices((17, 17, 17)) - 8
        ball = (grid**2).sum(axis=0) <= 36
        labels[box][ball & (labels[box] == 0)] = number

    ct_values = np.full(CT_SHAPE[1:], 40.0, dtype=np.float32)
    ct = ct_series(np.broadcast_to(ct_values, CT_SHAPE), ct_geometry, ids)
    ct_paths = write_datasets(ct, folder / "ct", "ct")
    del ct

    pet_ids = SeriesIds(study_uid=ids.study_uid, frame_of_reference_uid=ids.frame_of_reference_uid)
    pet_values = rng.uniform(1000.0, 8000.0, PET_SHAPE[1:])
    write_datasets(pet_series(np.broadcast_to(pet_values, PET_SHAPE), pet_geometry, pet_ids), folder / "pet", "pt")

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct_paths]
    seg = segmentation(headers, labels, labels=[f"Lesion {number}" for number in range(1, LESIONS + 1)])
    seg.StudyInstanceUID = ids.study_uid
    write_datasets([seg], folder / "seg", "seg")


def run_load_study(folder: Path) -> dict[str, float]:
    """Child process: load the study and report seconds and peak RSS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dicom.study import load_study

    start = time.perf_counter()
    inputs = load_study([folder])
    seconds = time.perf_counter() - start
    assert len(inputs.lesions) == LESIONS, len(inputs.lesions)
    return {"seconds": seconds, "peak_mb": _peak_mb()}


def run_reference(folder: Path) -> dict[str, float]:
    """Child process: read every image file whole and stack the rescaled slices."""
    import pydicom

    start = time.perf_counter()
    for series in ("ct", "pet"):
        datasets = [pydicom.dcmread(path) for path in sorted((folder / series).iterdir())]
        datasets.sort(key=lambda dataset: float(dataset.ImagePositionPatient[2]))
        volume = np.stack(
            [
                dataset.pixel_array.astype(np.float32) * float(dataset.RescaleSlope)
                + float(dataset.RescaleIntercept)
                for dataset in datasets
            ]
        )
        del datasets, volume
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb()}


def _peak_mb() -> float:
    """Return this process's peak resident memory (VmHWM), which starts afresh at exec.

    ``getrusage`` is not used because Linux carries ``ru_maxrss`` over ``execve``,
    so the child would report the peak of the generating parent.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(mode: str, folder: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, mode, str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3:
        runner = run_load_study if sys.argv[1] == "load" else run_reference
        print(json.dumps(runner(Path(sys.argv[2]))))
        return

    with tempfile.TemporaryDirectory(prefix="hclal-bench-") as temporary:
        folder = Path(temporary)
        write_study(folder)
        reference = _child("reference", folder)
        measured = _child("load", folder)

    print(
        json.dumps(
            {
                "benchmark": "load_study",
                "ct_shape": list(CT_SHAPE),
                "pet_shape": list(PET_SHAPE),
                "lesions": LESIONS,
                "seconds": round(measured["seconds"], 2),
                "peak_mb": round(measured["peak_mb"], 1),
                "reference_seconds": round(reference["seconds"], 2),
                "reference_peak_mb": round(reference["peak_mb"], 1),
                "ratio_seconds": round(measured["seconds"] / reference["seconds"], 3),
                "ratio_peak_mb": round(measured["peak_mb"] / reference["peak_mb"], 3),
                "target_seconds": TARGET_SECONDS,
                "target_peak_mb": TARGET_PEAK_MB,
                "within_targets": measured["seconds"] < TARGET_SECONDS and measured["peak_mb"] < TARGET_PEAK_MB,
            }
        )
    )


if __name__ == "__main__":
    main()
