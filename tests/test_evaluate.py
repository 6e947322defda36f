"""``hclal evaluate``: box matching, top-1 accuracy per level and region, confused pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.evaluate import EvaluationError, box_iou, evaluate
from worker.cli import app

BOX = ["x", "y", "z", "width", "height", "depth"]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def lesion(image: str, centre: tuple[float, float, float], size: float, **labels: str) -> dict[str, object]:
    row: dict[str, object] = {"image_path": image, "image_path1": image + ".pet", "image_path2": image + ".mask"}
    row.update(dict(zip(BOX, [*centre, size, size, size])))
    row.update(labels)
    return row


@pytest.fixture
def truth_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "truth.csv",
        [
            lesion("a", (0, 0, 0), 10, GT="liver_segment_4a", coarse_gt="liver", fine_gt="liver_segment_4a", region="abdomen"),
            lesion("a", (100, 0, 0), 10, GT="lung_upper_lobe_left", coarse_gt="lung_left", fine_gt="lung_upper_lobe_left", region="chest"),
            lesion("b", (0, 0, 0), 20, GT="rib_4_left,rib_5_left", coarse_gt="ribs_left", fine_gt="rib_4_left", region="axial_skeleton"),
            lesion("b", (50, 50, 50), 10, GT="spleen", coarse_gt="spleen", fine_gt="spleen", region="abdomen"),
        ],
    )


@pytest.fixture
def prediction_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "pred.csv",
        [
            # Shifted 2 mm: IoU 800 / 1200 = 0.667, a match, and right.
            lesion("a", (2, 0, 0), 10, pred="liver_segment_4a", coarse_labels="liver,stomach", fine_labels="liver_segment_4a"),
            # Right coarse site, wrong fine site.
            lesion("a", (100, 0, 0), 10, pred="lung_lower_lobe_left", coarse_labels="lung_left", fine_labels="lung_lower_lobe_left"),
            # The second accepted answer counts as right.
            lesion("b", (0, 0, 1), 20, pred="rib_5_left", coarse_labels="ribs_left", fine_labels="rib_5_left"),
            # Shifted 6 mm: IoU 400 / 1600 = 0.25, no match.
            lesion("b", (56, 50, 50), 10, pred="spleen", coarse_labels="spleen", fine_labels="spleen"),
            # A lesion in an image without ground truth.
            lesion("c", (0, 0, 0), 10, pred="spleen"),
        ],
    )


def test_box_iou_hand_computed():
    first = np.array([0, 0, 0, 10, 10, 10], dtype=float)

    assert box_iou(first, np.array([2, 0, 0, 10, 10, 10], dtype=float)) == pytest.approx(800 / 1200)
    assert box_iou(first, np.array([6, 0, 0, 10, 10, 10], dtype=float)) == pytest.approx(400 / 1600)
    assert box_iou(first, np.array([20, 0, 0, 10, 10, 10], dtype=float)) == 0.0
    assert box_iou(first, first) == pytest.approx(1.0)


def test_evaluate_counts(prediction_csv: Path, truth_csv: Path):
    report = evaluate(prediction_csv, truth_csv)

    assert report.predictions == 5
    assert report.truths == 4
    assert report.matched == 3
    assert (report.overall.correct, report.overall.total) == (2, 3)
    assert (report.levels["coarse"].correct, report.levels["coarse"].total) == (3, 3)
    # Fine level compares with fine_gt alone, so rib_5_left is wrong there.
    assert (report.levels["fine"].correct, report.levels["fine"].total) == (1, 3)
    assert (report.regions["abdomen"].correct, report.regions["abdomen"].total) == (1, 1)
    assert (report.regions["chest"].correct, report.regions["chest"].total) == (0, 1)
    assert report.most_confused() == [("lung_upper_lobe_left", "lung_lower_lobe_left", 1)]


def test_evaluate_best_overlap_wins(tmp_path: Path):
    truth = write_csv(
        tmp_path / "truth.csv",
        [lesion("a", (0, 0, 0), 10, GT="near"), lesion("a", (3, 0, 0), 10, GT="far")],
    )
    prediction = write_csv(tmp_path / "pred.csv", [lesion("a", (1, 0, 0), 10, pred="near")])

    report = evaluate(prediction, truth)

    # IoU with "near" is 900/1100, with "far" 800/1200: "near" is matched.
    assert (report.overall.correct, report.overall.total) == (1, 1)


def test_evaluate_missing_column(tmp_path: Path, truth_csv: Path):
    prediction = write_csv(tmp_path / "pred.csv", [lesion("a", (0, 0, 0), 10, answer="x")])

    with pytest.raises(EvaluationError, match=r"missing column\(s\) \['pred'\]"):
        evaluate(prediction, truth_csv)


def test_evaluate_command_prints_accuracy(prediction_csv: Path, truth_csv: Path):
    result = CliRunner().invoke(app, ["evaluate", str(prediction_csv), str(truth_csv)])

    assert result.exit_code == 0, result.output
    assert "top-1 accuracy: 66.67 % (2/3)" in result.output
    assert "matched (IoU > 0.5) 3" in result.output
    assert "lung_lower_lobe_left" in result.output


def test_evaluate_command_json(prediction_csv: Path, truth_csv: Path):
    result = CliRunner().invoke(app, ["evaluate", str(prediction_csv), str(truth_csv), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["top1"] == {"correct": 2, "total": 3, "accuracy": pytest.approx(2 / 3)}
    assert report["levels"]["coarse"]["accuracy"] == 1.0
    assert report["most_confused"][0]["truth"] == "lung_upper_lobe_left"


def test_evaluate_command_bad_number(tmp_path: Path, truth_csv: Path):
    prediction = write_csv(tmp_path / "pred.csv", [lesion("a", ("x", 0, 0), 10, pred="liver")])

    result = CliRunner().invoke(app, ["evaluate", str(prediction), str(truth_csv)])

    assert result.exit_code == 1
    assert "line 2: box value is not a number" in result.output
