"""Top-1 accuracy of site predictions against ground truth lists in the reference CSV form.

Both files have one lesion per row with the image columns ``image_path``, ``image_path1``,
... and the box columns ``x``, ``y``, ``z`` (centre, world mm) and ``width``, ``height``,
``depth`` (size, mm). A prediction matches the ground-truth lesion of the same image with
the largest box IoU above 0.5; unmatched predictions and unmatched truths are counted but
do not enter the accuracy.

Prediction columns: ``pred`` (the answer), and optionally ``coarse_labels`` and
``fine_labels`` (comma-separated, best first) for the per-level accuracy.
Truth columns: ``GT`` (comma-separated acceptable answers) or ``fine_gt``, and optionally
``coarse_gt``, ``fine_gt`` and ``region``.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOX_COLUMNS = ("x", "y", "z", "width", "height", "depth")
IMAGE_COLUMN = "image_path"
MATCH_IOU = 0.5


class EvaluationError(ValueError):
    """An input CSV is missing a column or holds a value that is not a number."""


@dataclass
class Accuracy:
    """Correct and evaluated lesion counts of one group."""

    correct: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        """Fraction correct, or None when no lesion was evaluated."""
        return self.correct / self.total if self.total else None

    def add(self, is_correct: bool) -> None:
        """Count one evaluated lesion."""
        self.total += 1
        self.correct += int(is_correct)


@dataclass
class EvaluationReport:
    """Accuracy of one prediction file; ``confusions`` counts ``(truth, prediction)`` errors."""

    predictions: int = 0
    truths: int = 0
    matched: int = 0
    overall: Accuracy = field(default_factory=Accuracy)
    levels: dict[str, Accuracy] = field(default_factory=dict)
    regions: dict[str, Accuracy] = field(default_factory=dict)
    confusions: Counter = field(default_factory=Counter)

    def most_confused(self, count: int = 10) -> list[tuple[str, str, int]]:
        """Return the ``count`` most frequent ``(truth, prediction, errors)`` triples."""
        return [(truth, pred, errors) for (truth, pred), errors in self.confusions.most_common(count)]

    def as_dict(self, confused: int = 10) -> dict[str, object]:
        """Return the report as JSON-ready values."""

        def accuracy_dict(accuracy: Accuracy) -> dict[str, object]:
            return {"correct": accuracy.correct, "total": accuracy.total, "accuracy": accuracy.value}

        return {
            "predictions": self.predictions,
            "truths": self.truths,
            "matched": self.matched,
            "top1": accuracy_dict(self.overall),
            "levels": {name: accuracy_dict(value) for name, value in sorted(self.levels.items())},
            "regions": {name: accuracy_dict(value) for name, value in sorted(self.regions.items())},
            "most_confused": [
                {"truth": truth, "prediction": pred, "count": errors}
                for truth, pred, errors in self.most_confused(confused)
            ],
        }


def read_rows(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV file into dictionaries, checking that the ``required`` columns exist."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            raise EvaluationError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return list(reader)


def split_labels(value: str | None) -> list[str]:
    """Split a comma-separated label list, dropping blanks."""
    return [label.strip() for label in (value or "").split(",") if label.strip()]


def box_of(row: dict[str, str], path: Path, line: int) -> np.ndarray:
    """Return ``[x, y, z, width, height, depth]`` of a row as floats."""
    try:
        return np.array([float(row[name]) for name in BOX_COLUMNS])
    except ValueError as exc:
        raise EvaluationError(f"{path} line {line}: box value is not a number ({exc})") from exc


def box_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Return the intersection over union of two boxes given as centre and size."""
    low = np.maximum(first[:3] - first[3:] / 2, second[:3] - second[3:] / 2)
    high = np.minimum(first[:3] + first[3:] / 2, second[:3] + second[3:] / 2)
    intersection = float(np.prod(np.clip(high - low, 0.0, None)))
    union = float(np.prod(first[3:]) + np.prod(second[3:])) - intersection
    return intersection / union if union > 0 else 0.0


def match_truth(box: np.ndarray, candidates: Sequence[tuple[np.ndarray, dict[str, str]]]) -> dict[str, str] | None:
    """Return the truth row whose box overlaps ``box`` most with IoU above 0.5, or None."""
    best, best_iou = None, MATCH_IOU
    for truth_box, row in candidates:
        iou = box_iou(box, truth_box)
        if iou > best_iou:
            best, best_iou = row, iou
    return best


def evaluate(prediction_csv: Path, truth_csv: Path) -> EvaluationReport:
    """Match predictions to ground truth by box IoU and count top-1 accuracy.

    Parameters
    ----------
    prediction_csv : Path
        Output of ``clip_apply``: image and box columns plus ``pred``.
    truth_csv : Path
        Ground truth: image and box columns plus ``GT`` or ``fine_gt``.

    Returns
    -------
    EvaluationReport
        Overall, per-level and per-region accuracy and the confused pairs.

    Raises
    ------
    EvaluationError
        If a column is missing or a box value is not a number.
    """
    predictions = read_rows(prediction_csv, [IMAGE_COLUMN, *BOX_COLUMNS, "pred"])
    truths = read_rows(truth_csv, [IMAGE_COLUMN, *BOX_COLUMNS])
    if truths and "GT" not in truths[0] and "fine_gt" not in truths[0]:
        raise EvaluationError(f"{truth_csv}: needs a 'GT' or 'fine_gt' column with the accepted labels")

    truths_by_image: dict[str, list[tuple[np.ndarray, dict[str, str]]]] = defaultdict(list)
    for line, row in enumerate(truths, start=2):
        truths_by_image[row[IMAGE_COLUMN]].append((box_of(row, truth_csv, line), row))

    report = EvaluationReport(predictions=len(predictions), truths=len(truths))
    for line, row in enumerate(predictions, start=2):
        truth = match_truth(box_of(row, prediction_csv, line), truths_by_image.get(row[IMAGE_COLUMN], []))
        if truth is None:
            continue
        report.matched += 1
        score_lesion(report, row, truth)
    return report


def score_lesion(report: EvaluationReport, prediction: dict[str, str], truth: dict[str, str]) -> None:
    """Add one matched lesion to the overall, level, region and confusion counts."""
    accepted = split_labels(truth.get("GT")) or split_labels(truth.get("fine_gt"))
    answer = prediction["pred"].strip()
    correct = answer in accepted
    report.overall.add(correct)
    if not correct:
        report.confusions[(accepted[0] if accepted else "", answer)] += 1

    region = (truth.get("region") or "").strip()
    if region:
        report.regions.setdefault(region, Accuracy()).add(correct)

    for level in ("coarse", "fine"):
        expected = split_labels(truth.get(f"{level}_gt"))
        ranked = split_labels(prediction.get(f"{level}_labels"))
        if expected and ranked:
            report.levels.setdefault(level, Accuracy()).add(ranked[0] in expected)
