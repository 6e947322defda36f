"""Tests of the HCL-AL networks: published parameter layout, shapes, CLIP tokenizer."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from models.networks.clip_text import ClipTextEncoder, causal_mask
from models.networks.image_encoder import ImageEncoder
from models.networks.tokenizer import ClipTokenizer, find_vocabulary_file

LAYOUT_LINE = re.compile(r"^module\.(\S+) \[([\d,]*)\] (\w+)$")


def published_layout(prefix: str, block: str) -> dict[str, tuple[int, ...]]:
    """Return ``{key: shape}`` of one block of the published layout, keys without ``module.``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (Path(__file__).parent / "data" / f"hcl-al-layout-{block}.txt").read_text().splitlines():
        match = LAYOUT_LINE.match(line.strip())
        if match and match.group(1).startswith(prefix):
            dims = tuple(int(d) for d in match.group(2).split(",") if d)
            shapes[match.group(1)[len(prefix):]] = dims
    return shapes


@pytest.mark.parametrize(
    ("block", "crop_shape", "fc_inputs"),
    [("coarse", (128, 96, 96), 73728), ("fine", (64, 64, 64), 16384)],
    ids=["coarse", "fine"],
)
def test_image_encoder_matches_published_layout(block, crop_shape, fc_inputs):
    expected = published_layout("image_encoder.", block)
    encoder = ImageEncoder(crop_shape)
    actual = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert actual == expected
    assert encoder.fc.in_features == fc_inputs
    parameters = sum(p.numel() for p in encoder.parameters())
    assert parameters == {"coarse": 44_988_480, "fine": 15_628_352}[block]


def test_image_encoder_width_keeps_key_names():
    small = ImageEncoder((32, 32, 48), width=0.25)
    full_keys = set(ImageEncoder((32, 32, 48)).state_dict())
    assert set(small.state_dict()) == full_keys
    assert small.in_block.conv.out_channels == 4
    assert small.down_256.down_conv.out_channels == 64
    # fc inputs: 64 channels * (32/16) * (32/16) * (48/16) voxels.
    assert small.fc.in_features == 64 * 2 * 2 * 3


def test_image_encoder_output_shape():
    encoder = ImageEncoder((32, 32, 32), width=0.25, embed_dim=64).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 32, 32, 32))
    assert out.shape == (2, 64)


def test_image_encoder_rejects_wrong_input():
    encoder = ImageEncoder((32, 32, 32), width=0.25)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 3, 32, 32, 32\)"):
        encoder(torch.randn(1, 3, 32, 32, 16))


def test_image_encoder_rejects_crop_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        ImageEncoder((30, 32, 32))


def test_clip_text_matches_published_layout():
    expected = published_layout("text_encoder.", "coarse")
    encoder = ClipTextEncoder()
    actual = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert actual == expected
    assert sum(p.numel() for p in encoder.parameters()) == 63_428_096


def test_clip_text_is_causal_and_pools_end_token():
    torch.manual_seed(0)
    encoder = ClipTextEncoder(context_length=8, vocab_size=20, width=16, layers=2, heads=2, embed_dim=8).eval()
    # Token 19 (the highest id) plays the end-of-text token.
    tokens = torch.tensor([[18, 3, 4, 19, 0, 0, 0, 0], [18, 3, 4, 19, 5, 6, 7, 1]])
    with torch.no_grad():
        out = encoder(tokens)
    # Tokens after the end token cannot change its causal feature.
    torch.testing.assert_close(out[0], out[1])
    changed = tokens.clone()
    changed[1, 2] = 9
    with torch.no_grad():
        assert not torch.allclose(encoder(changed)[1], out[1])


def test_causal_mask_hides_later_tokens():
    mask = causal_mask(3)
    assert mask[0, 1] == float("-inf")
    assert mask[1, 0] == 0
    assert mask[2, 2] == 0


needs_vocabulary = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None,
    reason="CLIP vocabulary missing: pip install --no-deps open_clip_torch",
)


@needs_vocabulary
def test_tokenizer_known_ids():
    tokenizer = ClipTokenizer()
    ids = tokenizer("a photo of a cat")
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].abs().sum() == 0
    assert tokenizer.vocab_size == 49408


@needs_vocabulary
def test_tokenizer_truncates_with_end_token():
    ids = ClipTokenizer()(" ".join(["liver"] * 100))
    assert ids.shape == (1, 77)
    assert ids[0, -1] == 49407
    assert ids[0, 0] == 49406


@needs_vocabulary
def test_tokenizer_round_trip():
    tokenizer = ClipTokenizer()
    text = "the left kidney lies in the retroperitoneum at l1-l2, 3 cm"
    assert tokenizer.decode(tokenizer.encode(text)) == "the left kidney lies in the retroperitoneum at l 1 - l 2 , 3 cm"


@needs_vocabulary
def test_tokenizer_agrees_with_open_clip():
    # Load open_clip's own tokenizer module from its file: importing the package would
    # import torchvision.
    path = find_vocabulary_file().parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()
    texts = [
        "Liver: the largest solid organ, in the right upper quadrant.",
        "Épiphyse fémorale — ¼ “quoted” &amp; café",
        "T12 vertebral body, 2nd lumbar; isn't it? C'est l'os",
        " ".join(["mediastinal lymph node"] * 40),
    ]
    assert torch.equal(ClipTokenizer()(texts), reference(texts))


def test_sentence_encoder_offline_projection(monkeypatch):
    from models.networks.sentence import SentenceEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = SentenceEncoder(embed_dim=512)
    assert set(encoder.state_dict()) == {"projection.weight", "projection.bias"}
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 384 * 512 + 512

    sentences = ["The liver lies in the right upper abdomen.", "The liver is in the upper right abdomen.",
                 "The femur is the bone of the thigh."]
    features = encoder.encode_sentences(sentences)
    assert features.shape == (3, 384)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    # MiniLM puts the two liver sentences closer than liver and femur.
    assert features[0] @ features[1] > features[0] @ features[2] + 0.2
    assert encoder(sentences).shape == (3, 512)
