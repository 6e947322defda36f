"""The reference-named commands on NIfTI studies: clip_coarse_train, clip_fine_train, clip_apply.

The studies are small synthetic NIfTI volumes written by the test (CT, PET in SUV and a
lesion mask), listed in CSV files of the reference form.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from models.checkpoint import load_checkpoint
from models.vocabulary import default_vocabulary
from tests.test_evaluate import write_csv
from worker.cli.seed import clip_apply_main, clip_coarse_train_main, clip_fine_train_main

# Training two tiny models takes about a minute on a 2-core CPU.
pytestmark = pytest.mark.slow

SHAPE = (40, 40, 40)  # z, y, x voxels
SPACING = 4.0  # mm
ORIGIN = (-80.0, -80.0, -80.0)  # LPS mm of voxel (0, 0, 0)
# (coarse, fine) sites and the voxel index (z, y, x) of each lesion's first corner.
LESIONS = [
    ("liver", "liver_segment_4a", (10, 10, 8)),
    ("liver", None, (10, 10, 14)),
    ("right_upper_lobe", None, (28, 10, 8)),
    ("right_upper_lobe", "__second__", (28, 10, 14)),
    ("urinary_bladder", None, (4, 26, 20)),
    ("skull", None, (34, 20, 20)),
]


def lesion_sites() -> list[tuple[str, str, tuple[int, int, int]]]:
    """Resolve each lesion's fine site: the named one, or the coarse site's first or second child."""
    vocabulary = default_vocabulary()
    sites = []
    for coarse, fine, corner in LESIONS:
        children = [site.id for site in vocabulary.children(coarse)]
        if fine is None:
            fine = children[0]
        elif fine == "__second__":
            fine = children[1]
        sites.append((coarse, fine, corner))
    return sites


def write_image(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((SPACING,) * 3)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path))
    return path


def index_to_lps(index: np.ndarray) -> np.ndarray:
    """Map a (z, y, x) index to LPS (x, y, z) mm for the identity-direction images."""
    return np.asarray(ORIGIN) + SPACING * np.asarray(index, dtype=float)[::-1]


def write_study(folder: Path, seed: int) -> tuple[list[str], list[dict[str, object]]]:
    """Write CT, PET and mask NIfTI files; return the paths and one truth row per lesion."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ct = np.full(SHAPE, -1000.0)
    ct[2:38, 4:36, 4:36] = 40.0
    pet = np.where(ct > -500, 1.0, 0.0)
    mask = np.zeros(SHAPE)

    rows = []
    for coarse, fine, corner in lesion_sites():
        z, y, x = corner
        ct[z : z + 3, y : y + 3, x : x + 3] = 60.0 + rng.normal(0, 5)
        pet[z : z + 3, y : y + 3, x : x + 3] = 8.0 + rng.normal(0, 0.5)
        mask[z : z + 3, y : y + 3, x : x + 3] = 1
        # Voxel centres of the 3-voxel cube span 8 mm; its edges span 12 mm.
        centre = index_to_lps(np.array(corner) + 1)
        rows.append({"centre": centre, "size": 3 * SPACING, "coarse": coarse, "fine": fine})

    paths = [
        str(write_image(ct, folder / "ct.nii.gz")),
        str(write_image(pet, folder / "pet.nii.gz")),
        str(write_image(mask, folder / "mask.nii.gz")),
    ]
    return paths, rows


def csv_rows(paths: list[str], lesions: list[dict[str, object]]) -> list[dict[str, object]]:
    rows = []
    for lesion in lesions:
        x, y, z = lesion["centre"]
        size = lesion["size"]
        rows.append(
            {
                "image_path": paths[0], "image_path1": paths[1], "image_path2": paths[2],
                "x": x, "y": y, "z": z, "width": size, "height": size, "depth": size,
                "coarse_gt": lesion["coarse"], "fine_gt": lesion["fine"], "GT": lesion["fine"],
            }
        )
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


TRAINING_SETTINGS = """
crop_size = (16, 16, 16)
spacing = (4.0, 4.0, 4.0)
width = 0.125
embed_dim = 32
epochs = 2
batch_size = 4
batches_per_epoch = 3
save_every = 1
device = "cpu"
num_workers = 0
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train a tiny coarse and fine model with the console scripts, once for the module."""
    root = tmp_path_factory.mktemp("seed")
    train_rows = []
    for seed in (1, 2):
        paths, lesions = write_study(root / f"train{seed}", seed)
        train_rows += csv_rows(paths, lesions)
    train_csv = write_csv(root / "train.csv", train_rows)

    coarse_config = root / "coarse_config.py"
    coarse_config.write_text(f"train_csv = {str(train_csv)!r}\noutput_dir = {str(root / 'coarse')!r}\n{TRAINING_SETTINGS}")
    fine_config = root / "fine_config.py"
    fine_config.write_text(
        f"train_csv = {str(train_csv)!r}\noutput_dir = {str(root / 'fine')!r}\n"
        f"coarse_model = {str(root / 'coarse' / 'model')!r}\nprompt_sites = 'trained'\n{TRAINING_SETTINGS}"
    )
    coarse_status = clip_coarse_train_main(["-i", str(coarse_config)])
    fine_status = clip_fine_train_main(["-i", str(fine_config)])

    paths, lesions = write_study(root / "test", 7)
    test_csv = write_csv(root / "test.csv", csv_rows(paths, lesions))
    return {
        "root": root, "coarse_status": coarse_status, "fine_status": fine_status,
        "coarse": root / "coarse" / "model", "fine": root / "fine" / "model", "test_csv": test_csv,
    }


def apply_config(trained: dict[str, Path], mode: str, csv_path: Path | None = None, top_k: int = 3) -> Path:
    path = trained["root"] / f"apply_{mode}.py"
    path.write_text(
        f"input_csv = {str(csv_path or trained['test_csv'])!r}\ntop_k = {top_k}\n"
        f"output_csv = {str(trained['root'] / f'pred_{mode}.csv')!r}\n"
        f"mode = {mode!r}\ncoarse_model = {str(trained['coarse'])!r}\nfine_model = {str(trained['fine'])!r}\n"
        "device = 'cpu'\n"
    )
    return path


def test_coarse_train_writes_checkpoint(trained: dict[str, Path]):
    assert trained["coarse_status"] == 0
    checkpoint = load_checkpoint(trained["coarse"])
    vocabulary = default_vocabulary()

    assert checkpoint.metadata.level == "coarse"
    assert checkpoint.metadata.site_ids == [site.id for site in vocabulary.coarse_sites]
    assert tuple(checkpoint.prompt_embeddings.shape) == (len(vocabulary.coarse_sites), 32)
    assert checkpoint.metadata.training["lesions"] == 12
    assert checkpoint.metadata.training["studies"] == 2
    assert checkpoint.metadata.training["epochs"] == 2
    assert checkpoint.metadata.crop_size == (16, 16, 16)
    assert tuple(checkpoint.text_projection["weight"].shape) == (32, 384)
    history = json.loads((trained["root"] / "coarse" / "history.json").read_text())
    assert len(history["loss"]) == 2
    assert (trained["root"] / "coarse" / "loss.png").is_file()


def test_fine_train_uses_coarse_predictions(trained: dict[str, Path]):
    assert trained["fine_status"] == 0
    checkpoint = load_checkpoint(trained["fine"])

    assert checkpoint.metadata.level == "fine"
    # prompt_sites = 'trained' keeps the prompts of the 6 fine sites with lesions only.
    assert sorted(checkpoint.metadata.site_ids) == sorted(fine for _, fine, _ in lesion_sites())
    assert tuple(checkpoint.prompt_embeddings.shape) == (6, 32)
    assert checkpoint.metadata.training["sites"] == 6


def test_apply_box_mode(trained: dict[str, Path]):
    vocabulary = default_vocabulary()
    # With every coarse site among the candidates, each lesion reaches the fine model,
    # whose checkpoint holds the prompts of the 6 trained fine sites only.
    coarse_count = len(vocabulary.coarse_sites)

    assert clip_apply_main(["-i", str(apply_config(trained, "box", top_k=coarse_count))]) == 0

    rows = read_csv(trained["root"] / "pred_box.csv")
    assert len(rows) == len(LESIONS)
    for row in rows:
        site = vocabulary.site(row["pred"])
        coarse_labels = row["coarse_labels"].split(",")
        assert len(coarse_labels) == coarse_count
        assert site.level == "fine"
        assert site.parent in coarse_labels
        assert row["site_id"] == row["pred"]
        assert row["site_code_value"] == site.code.value
        assert row["site_code_scheme"] == "SCT"
        assert 0.0 < float(row["probability"]) <= 1.0
        assert row["uncertain"] in ("true", "false")
        assert row["fine_labels"].split(",")[0] == row["pred"]


def test_apply_mask_mode_boxes(trained: dict[str, Path]):
    # One row per study is enough in mask mode.
    one_row = write_csv(trained["root"] / "mask_input.csv", read_csv(trained["test_csv"])[:1])

    assert clip_apply_main(["-i", str(apply_config(trained, "mask", one_row))]) == 0

    rows = read_csv(trained["root"] / "pred_mask.csv")
    assert len(rows) == len(LESIONS)
    assert {row["class"] for row in rows} == {"bbox"}
    expected = sorted(tuple(np.round(index_to_lps(np.array(corner) + 1), 3)) for _, _, corner in lesion_sites())
    found = sorted((float(row["x"]), float(row["y"]), float(row["z"])) for row in rows)
    assert found == pytest.approx(expected)
    assert {float(row["width"]) for row in rows} == {12.0}


def test_apply_output_evaluates(trained: dict[str, Path]):
    from models.evaluate import evaluate

    clip_apply_main(["-i", str(apply_config(trained, "box"))])

    report = evaluate(trained["root"] / "pred_box.csv", trained["test_csv"])
    assert report.matched == len(LESIONS)
    assert report.levels["coarse"].total == len(LESIONS)
    assert report.overall.total == len(LESIONS)


def test_apply_missing_column(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    broken = write_csv(trained["root"] / "broken.csv", [{"image_path": "ct.nii.gz", "image_path1": "pet.nii.gz"}])

    assert clip_apply_main(["-i", str(apply_config(trained, "box", broken))]) == 1
    assert "missing column(s) ['x', 'y', 'z', 'width', 'height', 'depth'] for box mode" in capsys.readouterr().err


def test_train_unknown_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "coarse_config.py"
    config.write_text("phantom_seeds = [1]\nbatchsize = 8\n")

    assert clip_coarse_train_main(["-i", str(config)]) == 1
    assert "unknown setting(s) ['batchsize']" in capsys.readouterr().err


def test_train_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert clip_fine_train_main(["-i", str(tmp_path / "none.py")]) == 1
    assert "none.py not found" in capsys.readouterr().err
