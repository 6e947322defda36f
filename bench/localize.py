"""Milliseconds per lesion of coarse-to-fine localisation: reference-style path against ours.

Both paths use the full-size published architecture with random weights: a coarse
image encoder for 96x96x128 crops at 2x2x3 mm, a fine encoder for 64^3 crops at
1.5 mm, and the CLIP ViT-B/32 text transformer (63 M parameters). The study is the
whole-body phantom (CT 256x256 pixels of 2 mm, 3 mm slices; PET of 4 mm voxels) with
one lesion in each of ``--lesions`` different sites, given as boxes (centre and
diameter).

(a) Reference style, as the published implementation works: one lesion at a time,
    tokenising and encoding every coarse site's prompt with the text transformer for
    each lesion, then the prompts of the children of its top 3 coarse sites.
(b) Ours: :class:`models.inference.Localizer`, all lesions batched through each image
    encoder against prompt embeddings stored in the checkpoints.

Both include cropping. The reference path runs on the first ``--reference-lesions``
lesions only, because it costs seconds per lesion on a CPU and the cost does not depend
on the lesion. Prints one JSON line. Run from the repository root:
``python bench/localize.py [--device cpu|cuda] [--lesions 50] [--reference-lesions 10]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom.phantom import StudyUids, build_phantom_volumes  # noqa: E402
from dicom.volume import Volume  # noqa: E402
from models.checkpoint import Checkpoint, CheckpointMetadata, encode_prompts, load_checkpoint, save_checkpoint  # noqa: E402
from models.crop import CropSpec, StudyCropper  # noqa: E402
from models.inference import Localizer, inference_context, resolve_device  # noqa: E402
from models.networks.clip_text import ClipTextEncoder  # noqa: E402
from models.networks.image_encoder import ImageEncoder  # noqa: E402
from models.networks.tokenizer import ClipTokenizer  # noqa: E402
from models.vocabulary import Vocabulary, default_vocabulary  # noqa: E402


COARSE_GRID = ((96, 96, 128), (2.0, 2.0, 3.0))
FINE_GRID = ((64, 64, 64), (1.5, 1.5, 1.5))
TOP_K = 3


def phantom_study(seed: int, lesions: int) -> tuple[Volume, Volume, list[tuple[float, ...]], list[tuple[float, ...]]]:
    """Return the phantom's CT (HU), PET (SUV) and the LPS centre and size in mm of each lesion's box."""
    volumes = build_phantom_volumes(seed, lesions)
    ct, pet = volumes.as_volumes(StudyUids.for_seed(seed))
    centres = [tuple(float(v) for v in lesion.centre_mm) for lesion in volumes.lesions]
    sizes = [(float(lesion.diameter_mm),) * 3 for lesion in volumes.lesions]
    return ct, pet, centres, sizes


def write_models(root: Path, vocabulary: Vocabulary, text_encoder: ClipTextEncoder) -> None:
    """Write random-weight coarse and fine checkpoints whose prompts the text encoder embedded."""
    for level, sites, (size, spacing) in (
        ("coarse", vocabulary.coarse_sites, COARSE_GRID),
        ("fine", vocabulary.fine_sites, FINE_GRID),
    ):
        metadata = CheckpointMetadata(
            level=level, crop_size=size, spacing=spacing, site_ids=[s.id for s in sites],
            prompts=[s.description for s in sites], vocabulary_id=vocabulary.vocabulary_id,
            vocabulary_sha256=vocabulary.vocabulary_hash, text_encoder="clip-vit-b32 (random weights)",
        )
        encoder = ImageEncoder(metadata.crop_shape)
        save_checkpoint(root / level, encoder, encode_prompts(text_encoder, metadata.prompts), metadata)


def reference_style(
    coarse: Checkpoint,
    fine: Checkpoint,
    vocabulary: Vocabulary,
    text_encoder: ClipTextEncoder,
    cropper: StudyCropper,
    centres: list[tuple[float, ...]],
    sizes: list[tuple[float, ...]],
    device: torch.device,
) -> list[str]:
    """Localise lesion by lesion, re-encoding every candidate prompt per lesion; return the fine ids."""
    coarse_spec = CropSpec.from_metadata(coarse.metadata)
    fine_spec = CropSpec.from_metadata(fine.metadata)
    tokenizer = ClipTokenizer()
    coarse_sites = list(vocabulary.coarse_sites)
    answers = []
    with inference_context(device):
        for centre, size in zip(centres, sizes, strict=True):
            box = [(centre, size)]
            image = F.normalize(coarse.image_encoder(cropper.crop(coarse_spec, [centre], box)).float(), dim=-1)
            texts = text_encoder(tokenizer([s.description for s in coarse_sites]).to(device))
            scores = torch.softmax(100.0 * image @ F.normalize(texts.float(), dim=-1).T, dim=-1)[0]
            top = [coarse_sites[int(i)].id for i in torch.topk(scores, TOP_K).indices]

            candidates = [child for coarse_id in top for child in vocabulary.children(coarse_id)]
            image = F.normalize(fine.image_encoder(cropper.crop(fine_spec, [centre], box)).float(), dim=-1)
            texts = text_encoder(tokenizer([s.description for s in candidates]).to(device))
            scores = torch.softmax(100.0 * image @ F.normalize(texts.float(), dim=-1).T, dim=-1)[0]
            answers.append(candidates[int(scores.argmax())].id)
    return answers


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run both paths on the same study and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--lesions", type=int, default=50, help="lesions localised by our path")
    parser.add_argument("--reference-lesions", type=int, default=10, help="lesions localised reference-style")
    parser.add_argument("--batch-size", type=int, default=8, help="lesions per encoder call in our path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    vocabulary = default_vocabulary()
    text_encoder = ClipTextEncoder().eval().to(device)
    ct, pet, centres, sizes = phantom_study(args.seed, args.lesions)
    reference_count = min(args.reference_lesions, args.lesions)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_models(root, vocabulary, text_encoder)
        localizer = Localizer.from_model_dir(root, vocabulary=vocabulary, device=device, batch_size=args.batch_size)
        cropper = StudyCropper(ct, pet, device)
        checkpoints = (load_checkpoint(root / "coarse", device), load_checkpoint(root / "fine", device))

        # One untimed lesion per path warms up allocators and kernels.
        localizer.localize_boxes(ct, pet, centres[:1], sizes[:1])
        reference_style(*checkpoints, vocabulary, text_encoder, cropper, centres[:1], sizes[:1], device)

        synchronise(device)
        start = time.perf_counter()
        reference_style(
            *checkpoints, vocabulary, text_encoder, cropper, centres[:reference_count], sizes[:reference_count], device
        )
        synchronise(device)
        reference_seconds = time.perf_counter() - start

        start = time.perf_counter()
        localizer.localize_boxes(ct, pet, centres, sizes)
        synchronise(device)
        ours_seconds = time.perf_counter() - start

    reference_ms = 1000.0 * reference_seconds / reference_count
    ours_ms = 1000.0 * ours_seconds / len(centres)
    print(json.dumps({
        "bench": "localize",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "lesions": len(centres),
        "reference_lesions": reference_count,
        "coarse_prompts": len(vocabulary.coarse_sites),
        "fine_prompts": len(vocabulary.fine_sites),
        "reference_ms_per_lesion": round(reference_ms, 1),
        "ours_ms_per_lesion": round(ours_ms, 1),
        "ratio": round(reference_ms / ours_ms, 2),
    }))


if __name__ == "__main__":
    main()
