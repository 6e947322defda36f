"""Tests of hierarchical localisation: probabilities by hand, candidate sets, coarse-only answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointError, CheckpointMetadata, save_checkpoint
from models.crop import CropSpec, StudyCropper, lesion_box_centre
from models.inference import Localizer, SitePrediction
from models.networks.image_encoder import ImageEncoder
from models.vocabulary import default_vocabulary
from tests.test_crop import Volume, axial_affine, lesion_from_mask

EMBED_DIM = 32
LOGIT_SCALE = 10.0
VOLUME_SHAPE = (40, 64, 64)


@pytest.fixture(scope="module")
def vocabulary():
    return default_vocabulary()


@pytest.fixture(scope="module")
def study():
    """A smooth random CT and PET, two small lesions and one larger than 100 mm."""
    generator = np.random.default_rng(3)
    affine = axial_affine(spacing=(2.0, 2.0, 3.0), origin=(-63.0, -63.0, -58.5))
    noise = torch.from_numpy(generator.normal(size=(1, 1, 10, 16, 16)).astype(np.float32))
    smooth = F.interpolate(noise, size=VOLUME_SHAPE, mode="trilinear", align_corners=False)[0, 0].numpy()
    ct = Volume(array=smooth * 300.0, affine=affine, series_instance_uid="1.2.826.0.1.3",
                frame_of_reference_uid="1.2.826.0.1.4", modality="CT")
    pet = Volume(array=np.abs(smooth[::-1].copy()) * 5.0, affine=affine, series_instance_uid="1.2.826.0.1.5",
                 frame_of_reference_uid="1.2.826.0.1.4", modality="PT")
    lesions = []
    for box in [(slice(10, 14), slice(10, 16), slice(40, 46)), (slice(25, 30), slice(40, 44), slice(8, 14)),
                (slice(1, 39), slice(2, 62), slice(2, 62))]:
        mask = np.zeros(VOLUME_SHAPE, dtype=bool)
        mask[box] = True
        lesions.append(lesion_from_mask(ct, mask))
    return ct, pet, lesions


def metadata(level, site_ids, vocabulary, spacing) -> CheckpointMetadata:
    return CheckpointMetadata(
        level=level, crop_size=(16, 16, 16), spacing=spacing, site_ids=site_ids,
        vocabulary_id=vocabulary.vocabulary_id, vocabulary_sha256=vocabulary.vocabulary_hash,
        width=0.125, embed_dim=EMBED_DIM, logit_scale=LOGIT_SCALE,
    )


def lesion_embeddings(encoder, meta, study) -> torch.Tensor:
    """Normalised embeddings of the study's lesions, computed without the localizer."""
    ct, pet, lesions = study
    crops = StudyCropper(ct, pet).crop_lesions(CropSpec.from_metadata(meta), lesions)
    with torch.no_grad():
        return F.normalize(encoder(crops), dim=-1)


def probabilities_by_hand(embeddings, prompts, row_sites, candidates=None) -> dict[str, float]:
    """softmax(scale * cosine) over the candidate rows, summed per site."""
    logits = LOGIT_SCALE * embeddings @ F.normalize(prompts, dim=-1).T
    rows = [i for i, site in enumerate(row_sites) if candidates is None or site in candidates]
    weights = torch.softmax(logits[rows], dim=0)
    result: dict[str, float] = {}
    for weight, row in zip(weights.tolist(), rows, strict=True):
        result[row_sites[row]] = result.get(row_sites[row], 0.0) + weight
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory, vocabulary, study):
    """Coarse and fine checkpoints whose prompts are set so that the answers are known."""
    root: Path = tmp_path_factory.mktemp("model")
    torch.manual_seed(11)
    coarse_ids = [site.id for site in vocabulary.coarse_sites[:6]]
    # Two prompt rows for the second site: its probability is their sum.
    coarse_rows = [*coarse_ids, coarse_ids[1]]
    coarse_meta = metadata("coarse", coarse_rows, vocabulary, (8.0, 8.0, 8.0))
    coarse_encoder = ImageEncoder(coarse_meta.crop_shape, width=0.125, embed_dim=EMBED_DIM).eval()
    coarse_embeddings = lesion_embeddings(coarse_encoder, coarse_meta, study)
    coarse_prompts = torch.randn(len(coarse_rows), EMBED_DIM) * 0.3
    coarse_prompts[1] = coarse_embeddings[0]
    coarse_prompts[3] = coarse_embeddings[1]
    save_checkpoint(root / "coarse", coarse_encoder, coarse_prompts, coarse_meta)

    fine_ids = [child.id for coarse_id in coarse_ids for child in vocabulary.children(coarse_id)]
    fine_meta = metadata("fine", fine_ids, vocabulary, (2.0, 2.0, 2.0))
    fine_encoder = ImageEncoder(fine_meta.crop_shape, width=0.125, embed_dim=EMBED_DIM).eval()
    fine_embeddings = lesion_embeddings(fine_encoder, fine_meta, study)
    fine_prompts = torch.randn(len(fine_ids), EMBED_DIM) * 0.3
    target = fine_ids.index(vocabulary.children(coarse_ids[1])[0].id)
    fine_prompts[target] = fine_embeddings[0]
    # The same prompt under a coarse site that lesion 0 does not rank: it must not compete.
    distractor = fine_ids.index(vocabulary.children(coarse_ids[5])[0].id)
    fine_prompts[distractor] = fine_embeddings[0]
    save_checkpoint(root / "fine", fine_encoder, fine_prompts, fine_meta)
    return {
        "root": root, "coarse_rows": coarse_rows, "coarse_prompts": coarse_prompts,
        "coarse_embeddings": coarse_embeddings, "fine_ids": fine_ids, "fine_prompts": fine_prompts,
        "fine_embeddings": fine_embeddings, "fine_target": fine_ids[target],
        "fine_distractor": fine_ids[distractor], "distractor_parent": coarse_ids[5],
    }


def test_coarse_probabilities_match_hand(models, study, vocabulary):
    ct, pet, lesions = study
    predictions = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu").localize(ct, pet, lesions)
    assert len(predictions) == 3
    for index, prediction in enumerate(predictions):
        expected = probabilities_by_hand(
            models["coarse_embeddings"][index], models["coarse_prompts"], models["coarse_rows"]
        )
        best = sorted(expected.items(), key=lambda item: -item[1])[:3]
        assert [site for site, _ in prediction.coarse_topk] == [site for site, _ in best]
        np.testing.assert_allclose([p for _, p in prediction.coarse_topk], [p for _, p in best], rtol=1e-4)
    assert predictions[0].coarse_topk[0][0] == models["coarse_rows"][1]
    assert predictions[1].coarse_topk[0][0] == models["coarse_rows"][3]


def test_fine_ranks_children_of_top_coarse(models, study, vocabulary):
    ct, pet, lesions = study
    localizer = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu")
    prediction = localizer.localize(ct, pet, lesions[:1])[0]
    allowed = {site for site, _ in prediction.coarse_topk}
    candidates = {s for s in models["fine_ids"] if vocabulary.site(s).parent in allowed}
    expected = probabilities_by_hand(
        models["fine_embeddings"][0], models["fine_prompts"], models["fine_ids"], candidates
    )

    assert models["distractor_parent"] not in allowed
    assert prediction.site_id == models["fine_target"]
    assert models["fine_distractor"] not in dict(prediction.fine_topk)
    assert prediction.site.parent == models["coarse_rows"][1]
    assert prediction.probability == pytest.approx(expected[models["fine_target"]], rel=1e-4)
    assert not prediction.coarse_only
    assert all(vocabulary.site(site).parent in allowed for site, _ in prediction.fine_topk)
    assert sum(expected.values()) == pytest.approx(1.0)


def test_fine_candidates_exclude_other_coarse(models, study, vocabulary):
    ct, pet, lesions = study
    localizer = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", top_k=1)
    prediction = localizer.localize(ct, pet, lesions[:1])[0]
    assert len(prediction.coarse_topk) == 1
    parents = {vocabulary.site(site).parent for site, _ in prediction.fine_topk}
    assert parents == {prediction.coarse_topk[0][0]}


def test_large_lesion_gets_coarse_answer(models, study, vocabulary):
    ct, pet, lesions = study
    prediction = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu").localize(
        ct, pet, lesions
    )[2]
    assert prediction.coarse_only
    assert prediction.fine_topk == []
    assert prediction.site.level == "coarse"
    assert prediction.site_id == prediction.coarse_topk[0][0]
    assert prediction.probability == prediction.coarse_topk[0][1]


def test_uncertain_below_threshold(models, study, vocabulary):
    ct, pet, lesions = study
    strict = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", uncertain_below=1.0)
    lenient = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", uncertain_below=0.0)
    assert [p.uncertain for p in strict.localize(ct, pet, lesions)] == [True, True, True]
    assert [p.uncertain for p in lenient.localize(ct, pet, lesions)] == [False, False, False]


def test_fusion_averages_parent_probability(models, study, vocabulary):
    ct, pet, lesions = study
    plain = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu")
    fused = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", fusion_below=1.0)
    before = plain.localize(ct, pet, lesions[:1])[0]
    after = fused.localize(ct, pet, lesions[:1])[0]
    coarse = dict(before.coarse_topk)
    fine = dict(before.fine_topk)
    assert after.site_id == before.site_id
    assert after.probability == pytest.approx((fine[after.site_id] + coarse[after.site.parent]) / 2, rel=1e-5)


def test_localize_is_deterministic_and_batch_independent(models, study, vocabulary):
    ct, pet, lesions = study
    batched = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", batch_size=16)
    single = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu", batch_size=1)
    first = batched.localize(ct, pet, lesions)
    assert batched.localize(ct, pet, lesions) == first
    for one, other in zip(single.localize(ct, pet, lesions), first, strict=True):
        assert one.site_id == other.site_id
        assert one.probability == pytest.approx(other.probability, rel=1e-4)


def test_localize_boxes_matches_box_geometry(models, study, vocabulary):
    ct, pet, lesions = study
    localizer = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu")
    centres = [lesion_box_centre(lesion) for lesion in lesions]
    predictions = localizer.localize_boxes(ct, pet, centres, [(12.0, 12.0, 12.0), (10.0, 8.0, 15.0), (120.0, 150.0, 110.0)])
    assert [p.coarse_only for p in predictions] == [False, False, True]
    assert all(isinstance(p, SitePrediction) for p in predictions)
    assert localizer.localize_boxes(ct, pet, [], []) == []


def test_localizer_without_fine_model(models, study, vocabulary):
    ct, pet, lesions = study
    prediction = Localizer.from_model_dir(models["root"] / "coarse", vocabulary=vocabulary, device="cpu").localize(
        ct, pet, lesions[:1]
    )[0]
    assert prediction.coarse_only
    assert prediction.site_id == models["coarse_rows"][1]


def test_localizer_rejects_swapped_levels(models, vocabulary):
    with pytest.raises(CheckpointError, match="is a fine model, expected a coarse model"):
        Localizer(models["root"] / "fine", models["root"] / "coarse", vocabulary=vocabulary, device="cpu")


def test_localizer_rejects_unknown_sites(tmp_path, vocabulary):
    meta = metadata("coarse", ["no_such_site"], vocabulary, (8.0, 8.0, 8.0))
    save_checkpoint(tmp_path, ImageEncoder(meta.crop_shape, width=0.125, embed_dim=EMBED_DIM),
                    torch.zeros(1, EMBED_DIM), meta)
    with pytest.raises(CheckpointError, match="names 1 sites that vocabulary hclal-coded-sites lacks"):
        Localizer(tmp_path, None, vocabulary=vocabulary, device="cpu")


def test_scores_stay_float32_under_autocast(models, vocabulary):
    localizer = Localizer.from_model_dir(models["root"], vocabulary=vocabulary, device="cpu")
    embeddings = models["coarse_embeddings"]
    expected = localizer.coarse.site_probabilities(embeddings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = localizer.coarse.site_probabilities(embeddings)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, expected, rtol=1e-6, atol=1e-7)


def test_changed_descriptions_are_re_encoded(tmp_path, vocabulary):
    from models.networks.sentence import SentenceEncoder

    sites = [vocabulary.coarse_sites[0], vocabulary.coarse_sites[1]]
    stale = ["An outdated sentence about this site.", sites[1].description]
    text = SentenceEncoder(embed_dim=EMBED_DIM)
    with torch.no_grad():
        stored = text(stale)
    meta = metadata("coarse", [site.id for site in sites], vocabulary, (8.0, 8.0, 8.0))
    meta.prompts = stale
    save_checkpoint(tmp_path, ImageEncoder(meta.crop_shape, width=0.125, embed_dim=EMBED_DIM), stored, meta,
                    text_projection=text.projection.state_dict())

    localizer = Localizer(tmp_path, None, vocabulary=vocabulary, device="cpu")
    with torch.no_grad():
        fresh = F.normalize(text([sites[0].description]), dim=-1)[0]
    torch.testing.assert_close(localizer.coarse.prompts[0], fresh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(localizer.coarse.prompts[1], F.normalize(stored[1], dim=-1))
    assert not torch.allclose(localizer.coarse.prompts[0], F.normalize(stored[0], dim=-1), atol=1e-3)
