"""Tests of our checkpoint format and of the import of published HCL-AL checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import (
    CT_NORMALIZER,
    PET_NORMALIZER,
    CheckpointError,
    CheckpointMetadata,
    HclalPrompt,
    Normalizer,
    build_image_encoder,
    import_hclal,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from models.networks.clip_text import ClipTextEncoder
from models.networks.image_encoder import ImageEncoder

needs_vocabulary = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None,
    reason="CLIP vocabulary missing: pip install --no-deps open_clip_torch",
)

PROMPTS = [
    HclalPrompt("Liver", "The liver lies in the right upper quadrant of the abdomen.", "liver"),
    HclalPrompt("Spleen", "The spleen lies in the left upper quadrant of the abdomen.", "spleen"),
    HclalPrompt("Left lung", "The left lung fills the left side of the chest.", "lung-left"),
    HclalPrompt("Right lung", "The right lung fills the right side of the chest.", "lung-right"),
]


class PublishedModel(nn.Module):
    """The published model's parts under their published names, for writing test checkpoints."""

    def __init__(self, crop_shape: tuple[int, int, int], width: float) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(crop_shape, width=width)
        # Two transformer layers keep the test fast; the importer reads the depth from the keys.
        self.text_encoder = ClipTextEncoder(layers=2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scores(self, crops: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image = nn.functional.normalize(self.image_encoder(crops), dim=-1)
        text = nn.functional.normalize(self.text_encoder(tokens), dim=-1)
        return torch.softmax(100.0 * image @ text.T, dim=-1)


class NotATensor:
    """A pickled object that the tensor-only unpickler rejects."""

    def __init__(self) -> None:
        self.value = 3


def published_params(model: nn.Module, **extra: object) -> dict[str, object]:
    params: dict[str, object] = {
        "state_dict": nn.DataParallel(model).state_dict(),
        "crop_size": [64, 64, 64],
        "spacing": [1.5, 1.5, 1.5],
        "crop_normalizers": [
            {"mean": 40.0, "stddev": 200.0, "clip": True},
            {"mean": 3.0, "stddev": 3.0, "clip": False},
        ],
        "interpolation": "linear",
        "input_channel": 3,
        "lesion_idx": 2,
        "net": "ClipText_ResidualNet",
        "epoch": 299,
    }
    params.update(extra)
    return params


@pytest.fixture(scope="module")
def published_model() -> PublishedModel:
    torch.manual_seed(7)
    model = PublishedModel((64, 64, 64), width=0.25)
    # Non-trivial batch-norm statistics, so that a lost buffer changes the scores.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def small_metadata(**changes: object) -> CheckpointMetadata:
    values: dict[str, object] = {
        "level": "coarse",
        "crop_size": (32, 32, 48),
        "spacing": (2.0, 2.0, 3.0),
        "site_ids": ["liver", "spleen", "liver"],
        "vocabulary_id": "test-vocabulary",
        "vocabulary_sha256": "0" * 64,
        "width": 0.25,
        "embed_dim": 16,
    }
    values.update(changes)
    return CheckpointMetadata(**values)  # type: ignore[arg-type]


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    metadata = small_metadata(training={"studies": 12, "epochs": 3})
    encoder = ImageEncoder(metadata.crop_shape, width=0.25, embed_dim=16).eval()
    embeddings = torch.randn(3, 16)
    save_checkpoint(tmp_path / "ckpt", encoder, embeddings, metadata)

    loaded = load_checkpoint(tmp_path / "ckpt")
    crops = torch.randn(2, 3, 48, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(crops), encoder(crops))
    torch.testing.assert_close(loaded.prompt_embeddings, embeddings)
    assert loaded.metadata.site_ids == ["liver", "spleen", "liver"]
    assert loaded.metadata.crop_shape == (48, 32, 32)
    assert loaded.metadata.normalizers == (CT_NORMALIZER, PET_NORMALIZER, None)
    assert loaded.metadata.training == {"studies": 12, "epochs": 3}
    assert len(loaded.metadata.weights_sha256) == 64
    assert not loaded.image_encoder.training


def test_checkpoint_metadata_is_plain_json(tmp_path):
    metadata = small_metadata()
    save_checkpoint(tmp_path, ImageEncoder(metadata.crop_shape, width=0.25, embed_dim=16), torch.zeros(3, 16), metadata)
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["normalizers"] == [
        {"mean": 40.0, "stddev": 200.0, "clip": True},
        {"mean": 3.0, "stddev": 3.0, "clip": False},
        None,
    ]
    assert data["channels"] == ["ct", "pet", "mask"]
    assert data["crop_size"] == [32, 32, 48]
    assert data["scales"] == [1.0]
    assert data["version"] == 2


def test_checkpoint_with_two_scales_round_trip(tmp_path):
    torch.manual_seed(0)
    metadata = small_metadata(scales=(1.0, 0.375))
    encoder = build_image_encoder(metadata).eval()
    save_checkpoint(tmp_path, encoder, torch.randn(3, 16), metadata)

    loaded = load_checkpoint(tmp_path)
    crops = torch.randn(2, 6, 48, 32, 32)
    assert loaded.metadata.scales == (1.0, 0.375)
    assert loaded.image_encoder.in_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(crops), encoder(crops))


def test_version_1_checkpoint_loads_with_one_scale(tmp_path):
    metadata = small_metadata()
    save_checkpoint(tmp_path, ImageEncoder(metadata.crop_shape, width=0.25, embed_dim=16), torch.zeros(3, 16), metadata)
    data = json.loads((tmp_path / "model.json").read_text())
    del data["scales"]
    data["version"] = 1
    (tmp_path / "model.json").write_text(json.dumps(data))

    loaded = load_checkpoint(tmp_path)
    assert loaded.metadata.scales == (1.0,)
    assert loaded.image_encoder.in_channels == 3


def test_checkpoint_detects_changed_weights(tmp_path):
    metadata = small_metadata()
    save_checkpoint(tmp_path, ImageEncoder(metadata.crop_shape, width=0.25, embed_dim=16), torch.zeros(3, 16), metadata)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_checkpoint(tmp_path)


def test_checkpoint_rejects_wrong_embedding_rows(tmp_path):
    metadata = small_metadata()
    encoder = ImageEncoder(metadata.crop_shape, width=0.25, embed_dim=16)
    with pytest.raises(CheckpointError, match=r"expected \(3, 16\) for 3 site ids"):
        save_checkpoint(tmp_path, encoder, torch.zeros(2, 16), metadata)


def test_checkpoint_rejects_encoder_of_other_shape(tmp_path):
    metadata = small_metadata()
    encoder = ImageEncoder((32, 32, 32), width=0.25, embed_dim=16)
    with pytest.raises(CheckpointError, match="first differing key: fc.weight"):
        save_checkpoint(tmp_path, encoder, torch.zeros(3, 16), metadata)


def test_metadata_rejects_bad_values():
    with pytest.raises(CheckpointError, match="level must be one of"):
        small_metadata(level="medium")
    with pytest.raises(CheckpointError, match="stddev must be positive"):
        Normalizer(0.0, 0.0, False)
    with pytest.raises(CheckpointError, match="newer than this worker"):
        small_metadata(version=99)
    with pytest.raises(CheckpointError, match="scales must be one or more positive spacing factors"):
        small_metadata(scales=(1.0, -0.5))


def test_load_rejects_folder_without_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="import-hclal"):
        read_metadata(tmp_path)


@needs_vocabulary
def test_import_gives_original_scores(tmp_path, published_model):
    from models.networks.tokenizer import ClipTokenizer

    model_dir = tmp_path / "published"
    model_dir.mkdir()
    torch.save(published_params(published_model), model_dir / "params.pth")

    metadata = import_hclal(model_dir, PROMPTS, tmp_path / "ours", "test-vocabulary", "1" * 64)
    assert metadata.level == "fine"
    assert metadata.width == 0.25
    assert metadata.crop_shape == (64, 64, 64)
    assert metadata.normalizers == (CT_NORMALIZER, PET_NORMALIZER, None)
    assert metadata.source["epoch"] == 299
    assert metadata.source["checkpoint_logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)

    imported = load_checkpoint(tmp_path / "ours")
    torch.manual_seed(1)
    crops = torch.randn(3, 3, 64, 64, 64)
    tokens = ClipTokenizer()([prompt.sentence for prompt in PROMPTS])
    with torch.no_grad():
        expected = published_model.scores(crops, tokens)
        image = nn.functional.normalize(imported.image_encoder(crops), dim=-1)
        text = nn.functional.normalize(imported.prompt_embeddings, dim=-1)
        actual = torch.softmax(imported.metadata.logit_scale * image @ text.T, dim=-1)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert imported.metadata.site_ids == ["liver", "spleen", "lung-left", "lung-right"]


def test_import_rejects_arbitrary_pickle(tmp_path, published_model):
    torch.save(published_params(published_model, net=NotATensor()), tmp_path / "params.pth")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        import_hclal(tmp_path, PROMPTS, tmp_path / "ours", "v", "0" * 64)
    assert not (tmp_path / "ours").exists()


@needs_vocabulary
def test_import_trusted_pickle(tmp_path, published_model):
    torch.save(published_params(published_model, net=NotATensor()), tmp_path / "params.pth")
    metadata = import_hclal(tmp_path, PROMPTS, tmp_path / "ours", "v", "0" * 64, trust_pickle=True)
    assert metadata.level == "fine"
    assert (tmp_path / "ours" / "model.safetensors").is_file()


def test_import_rejects_encrypted_file(tmp_path):
    (tmp_path / "params.pth").write_bytes(b"uAI_model" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="is encrypted"):
        import_hclal(tmp_path, PROMPTS, tmp_path / "ours", "v", "0" * 64)


def test_import_rejects_missing_keys(tmp_path):
    torch.save({"state_dict": {}, "spacing": [1, 1, 1]}, tmp_path / "params.pth")
    with pytest.raises(CheckpointError, match=r"lacks the keys \['crop_size', 'crop_normalizers'\]"):
        import_hclal(tmp_path, PROMPTS, tmp_path / "ours", "v", "0" * 64)


def test_import_needs_level_for_unknown_crop(tmp_path, published_model):
    torch.save(published_params(published_model, crop_size=[64, 64, 80]), tmp_path / "params.pth")
    with pytest.raises(CheckpointError, match="pass --level coarse or --level fine"):
        import_hclal(tmp_path, PROMPTS, tmp_path / "ours", "v", "0" * 64)


def hclal_library_files(tmp_path: Path, vocabulary) -> tuple[Path, Path, list[str]]:
    """Write a published-style library of two coarse sites and their fine sites, by our names."""
    coarse_sites = [vocabulary.site("liver"), vocabulary.coarse_sites[0]]
    library = {"Abdomen": {}, "Head": {}}
    descriptions: dict[str, str] = {}
    fine_ids: list[str] = []
    for region, coarse in zip(("Abdomen", "Head"), coarse_sites, strict=True):
        children = vocabulary.children(coarse.id)
        library[region][coarse.name] = [child.name for child in children]
        descriptions[coarse.name] = coarse.description
        for child in children:
            descriptions[child.name] = child.description
            fine_ids.append(child.id)
    library_path = tmp_path / "library.json"
    descriptions_path = tmp_path / "descriptions.json"
    library_path.write_text(json.dumps(library))
    descriptions_path.write_text(json.dumps(descriptions))
    return library_path, descriptions_path, fine_ids


@needs_vocabulary
def test_cli_import_hclal_and_show(tmp_path, published_model):
    from typer.testing import CliRunner

    from models.vocabulary import default_vocabulary
    from worker.cli import app

    vocabulary = default_vocabulary()
    library, descriptions, fine_ids = hclal_library_files(tmp_path, vocabulary)
    model_dir = tmp_path / "published"
    model_dir.mkdir()
    torch.save(published_params(published_model), model_dir / "params.pth")
    out = tmp_path / "imported"

    runner = CliRunner()
    result = runner.invoke(app, ["models", "import-hclal", str(model_dir), "--library", str(library),
                                 "--descriptions", str(descriptions), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote fine checkpoint {out}: {len(fine_ids)} prompts" in result.output

    metadata = read_metadata(out)
    assert metadata.site_ids == fine_ids
    assert metadata.prompts[0] == vocabulary.site(fine_ids[0]).description
    assert metadata.vocabulary_sha256 == vocabulary.vocabulary_hash

    shown = runner.invoke(app, ["models", "show", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["site_ids"] == fine_ids
    table = runner.invoke(app, ["models", "show", str(out)])
    assert table.exit_code == 0
    assert "fine model" in table.output
    assert "(v - 40) / 200, clipped to [-1, 1]" in table.output
    assert "1 (1.5 x 1.5 x 1.5 mm)" in table.output


def test_cli_import_rejects_untrusted_pickle(tmp_path, published_model):
    from typer.testing import CliRunner

    from models.vocabulary import default_vocabulary
    from worker.cli import app

    library, descriptions, _ = hclal_library_files(tmp_path, default_vocabulary())
    torch.save(published_params(published_model, net=NotATensor()), tmp_path / "params.pth")
    result = CliRunner().invoke(app, ["models", "import-hclal", str(tmp_path), "--library", str(library),
                                      "--descriptions", str(descriptions), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "--trust-pickle" in result.output
    assert not (tmp_path / "out").exists()


class PublishedNormalizer:
    """A normaliser object as a trusted pickle may contain it."""

    def __init__(self, mean: float, stddev: float, clip: bool) -> None:
        self.mean, self.stddev, self.clip = mean, stddev, clip


def test_normalizers_from_objects_and_mappings():
    from models.checkpoint import normalizers_from_hclal

    converted = normalizers_from_hclal([PublishedNormalizer(40, 200, True), {"mean": 3, "stddev": 3, "clip": False}], 3)
    assert converted == (CT_NORMALIZER, PET_NORMALIZER, None)
    with pytest.raises(CheckpointError, match="channel 0 lacks 'stddev'"):
        normalizers_from_hclal([{"mean": 1, "clip": True}], 1)
