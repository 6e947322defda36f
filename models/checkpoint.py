"""Model checkpoints: our safetensors + JSON format, and import of published HCL-AL models.

A checkpoint is a folder with two files:

``model.safetensors``
    The image encoder's state dict (keys as in :class:`~models.networks.ImageEncoder`)
    and ``prompt_embeddings``, one row per vocabulary prompt in the order of
    ``site_ids``. Text encoders are frozen, so inference needs no text encoder.
    Models trained with the sentence encoder may add its linear projection under
    ``text_projection.*``.
``model.json``
    :class:`CheckpointMetadata`: architecture, crop grid, normalisers, channel order,
    vocabulary, training summary, format version and the SHA-256 of the weights file.

Loading reads only these two formats and never unpickles. Published HCL-AL models are
torch pickles; :func:`import_hclal` converts one with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from models.networks.image_encoder import STEM_CHANNELS, ImageEncoder

if TYPE_CHECKING:
    from models.vocabulary import Vocabulary
    from models.vocabulary.hclal_import import HclalImport

LOGGER = logging.getLogger(__name__)

# Version 2 added ``scales``; version 1 files have one scale and still load.
FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"
# Optional trainable text projection of sentence-encoder checkpoints, which lets
# inference re-encode prompts whose vocabulary description changed.
TEXT_PROJECTION_PREFIX = "text_projection."
ARCHITECTURE = "hclal-residual3d"
LEVELS = ("coarse", "fine")
DEFAULT_CHANNELS = ("ct", "pet", "mask")
DEFAULT_INTERPOLATION = ("linear", "linear", "nearest")
# Scores at inference are softmax(100 * cosine(image, text)), as published.
DEFAULT_LOGIT_SCALE = 100.0

HCLAL_PARAMS_FILE = "params.pth"
HCLAL_ENCRYPTED_TAG = b"uAI_model"
HCLAL_REQUIRED_KEYS = ("state_dict", "crop_size", "spacing", "crop_normalizers")
DATA_PARALLEL_PREFIX = "module."
CLIP_HEAD_WIDTH = 64
# Crop sizes (x, y, z) of the published models; they tell the level of an imported model.
HCLAL_PUBLISHED_CROPS = {(96, 96, 128): "coarse", (64, 64, 64): "fine"}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe to read or inconsistent; the message names the problem."""


@dataclass(frozen=True)
class Normalizer:
    """Intensity normalisation of one input channel: ``(v - mean) / stddev``, clipped to [-1, 1] if ``clip``."""

    mean: float
    stddev: float
    clip: bool

    def __post_init__(self) -> None:
        if not self.stddev > 0:
            raise CheckpointError(f"normaliser stddev must be positive, got {self.stddev}")


CT_NORMALIZER = Normalizer(mean=40.0, stddev=200.0, clip=True)
PET_NORMALIZER = Normalizer(mean=3.0, stddev=3.0, clip=False)


@dataclass
class CheckpointMetadata:
    """Everything needed to rebuild a model and prepare its input, stored as ``model.json``.

    ``crop_size`` and ``spacing`` are in patient-axis order ``(x, y, z)`` (voxels and mm);
    the network input is ``(channels, z, y, x)``. ``normalizers`` and ``interpolation``
    have one entry per channel, ``None`` for a channel passed unchanged (the mask).
    ``scales`` multiply ``spacing``: the input holds every channel once per scale, all
    grids of the same size and centre, the channels of the first scale first. Published
    models have one scale, 1.
    ``site_ids`` names the vocabulary site of each prompt embedding row; a site may
    appear on several rows when several prompts describe it.
    """

    level: str
    crop_size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    site_ids: list[str]
    vocabulary_id: str
    vocabulary_sha256: str
    width: float = 1.0
    embed_dim: int = 512
    architecture: str = ARCHITECTURE
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    interpolation: tuple[str, ...] = DEFAULT_INTERPOLATION
    normalizers: tuple[Normalizer | None, ...] = (CT_NORMALIZER, PET_NORMALIZER, None)
    scales: tuple[float, ...] = (1.0,)
    logit_scale: float = DEFAULT_LOGIT_SCALE
    prompts: list[str] = field(default_factory=list)
    text_encoder: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    created: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        self.crop_size = tuple(int(v) for v in self.crop_size)  # type: ignore[assignment]
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.channels = tuple(self.channels)
        self.interpolation = tuple(self.interpolation)
        self.scales = tuple(float(v) for v in self.scales)
        self.normalizers = tuple(
            n if n is None or isinstance(n, Normalizer) else Normalizer(**n) for n in self.normalizers
        )
        self.validate()

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Network input size ``(z, y, x)`` in voxels."""
        x, y, z = self.crop_size
        return (z, y, x)

    @property
    def input_channels(self) -> int:
        """Channels of the network input: every channel once per scale."""
        return len(self.channels) * len(self.scales)

    def validate(self) -> None:
        """Raise :class:`CheckpointError` naming the first inconsistent field."""
        if self.level not in LEVELS:
            raise CheckpointError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.architecture != ARCHITECTURE:
            raise CheckpointError(f"architecture {self.architecture!r} is not supported; expected {ARCHITECTURE!r}")
        if len(self.crop_size) != 3 or len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise CheckpointError(f"invalid crop grid: crop_size {self.crop_size}, spacing {self.spacing} mm")
        if not self.scales or min(self.scales) <= 0:
            raise CheckpointError(f"scales must be one or more positive spacing factors, got {self.scales}")
        channel_lists = (len(self.channels), len(self.interpolation), len(self.normalizers))
        if len(set(channel_lists)) != 1:
            raise CheckpointError(
                f"channels, interpolation and normalizers differ in length: {channel_lists}"
            )
        unknown = set(self.channels) - set(DEFAULT_CHANNELS)
        if unknown:
            raise CheckpointError(f"unknown input channels {sorted(unknown)}; expected some of {DEFAULT_CHANNELS}")
        if self.version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {self.version} is newer than this worker's {FORMAT_VERSION}; "
                "upgrade the worker"
            )
        if self.prompts and len(self.prompts) != len(self.site_ids):
            raise CheckpointError(f"{len(self.prompts)} prompts for {len(self.site_ids)} site ids")

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object written to ``model.json``."""
        data = dataclasses.asdict(self)
        data["normalizers"] = [None if n is None else dataclasses.asdict(n) for n in self.normalizers]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointMetadata:
        """Build metadata from a ``model.json`` object, rejecting unknown or missing fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CheckpointError(f"unknown metadata fields {sorted(unknown)}; the checkpoint is from a newer worker")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"invalid metadata: {exc}") from None


@dataclass
class Checkpoint:
    """A loaded model: metadata, image encoder in eval mode and the prompt embeddings."""

    metadata: CheckpointMetadata
    image_encoder: ImageEncoder
    prompt_embeddings: torch.Tensor
    path: Path | None = None
    text_projection: dict[str, torch.Tensor] | None = None


def build_image_encoder(metadata: CheckpointMetadata) -> ImageEncoder:
    """Return a randomly initialised image encoder shaped as ``metadata`` describes."""
    return ImageEncoder(
        metadata.crop_shape,
        in_channels=metadata.input_channels,
        embed_dim=metadata.embed_dim,
        width=metadata.width,
    )


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    out_dir: Path,
    image_encoder: ImageEncoder,
    prompt_embeddings: torch.Tensor,
    metadata: CheckpointMetadata,
    text_projection: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder and return its path.

    Parameters
    ----------
    out_dir
        Folder to create or overwrite ``model.safetensors`` and ``model.json`` in.
    image_encoder
        Trained encoder; its state dict must fit ``metadata``.
    prompt_embeddings
        ``(len(metadata.site_ids), metadata.embed_dim)`` text embeddings.
    metadata
        Description of the model; ``created`` and ``weights_sha256`` are filled in here.
    text_projection
        State dict (``weight``, ``bias``) of the linear layer that maps sentence-encoder
        features to the prompt embeddings, for models trained with
        :class:`~models.networks.sentence.SentenceEncoder`.
    """
    rows = len(metadata.site_ids)
    if tuple(prompt_embeddings.shape) != (rows, metadata.embed_dim):
        raise CheckpointError(
            f"prompt embeddings have shape {tuple(prompt_embeddings.shape)}, "
            f"expected ({rows}, {metadata.embed_dim}) for {rows} site ids"
        )
    expected = build_image_encoder(metadata).state_dict()
    state = image_encoder.state_dict()
    differing = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    differing += sorted(set(state) - set(expected))
    if differing:
        raise CheckpointError(f"image encoder does not match the metadata; first differing key: {differing[0]}")

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    tensors[PROMPT_EMBEDDINGS_KEY] = prompt_embeddings.detach().to("cpu", torch.float32).contiguous()
    for key, value in (text_projection or {}).items():
        tensors[TEXT_PROJECTION_PREFIX + key] = value.detach().to("cpu", torch.float32).contiguous()
    weights_path = out_dir / WEIGHTS_FILE
    save_file(tensors, str(weights_path), metadata={"format": "hclal", "version": str(FORMAT_VERSION)})

    metadata.created = metadata.created or datetime.now(UTC).isoformat(timespec="seconds")
    metadata.weights_sha256 = file_sha256(weights_path)
    metadata_path = out_dir / METADATA_FILE
    metadata_path.write_text(json.dumps(metadata.to_json(), indent=2) + "\n", encoding="utf-8")
    LOGGER.info(
        "wrote %s checkpoint %s: %d prompt embeddings, vocabulary %s",
        metadata.level, out_dir, rows, metadata.vocabulary_id,
    )
    return out_dir


def read_metadata(path: Path) -> CheckpointMetadata:
    """Read ``model.json`` of the checkpoint folder ``path``."""
    metadata_path = Path(path) / METADATA_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found")
    if not metadata_path.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint folder: {METADATA_FILE} not found "
            "(for a published HCL-AL params.pth run 'hclal models import-hclal' first)"
        )
    try:
        data = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{metadata_path} is not valid JSON: {exc}") from None
    return CheckpointMetadata.from_json(data)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder without unpickling anything.

    Raises
    ------
    CheckpointError
        If a file is missing, the weights do not match their recorded SHA-256 or the
        metadata, or the metadata is invalid.
    """
    path = Path(path)
    metadata = read_metadata(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} not found; copy the whole checkpoint folder")
    digest = file_sha256(weights_path)
    if metadata.weights_sha256 and digest != metadata.weights_sha256:
        raise CheckpointError(
            f"{weights_path} has SHA-256 {digest}, but {METADATA_FILE} records {metadata.weights_sha256}; "
            "the file is corrupt or was replaced"
        )

    tensors = load_file(str(weights_path), device="cpu")
    prompt_embeddings = tensors.pop(PROMPT_EMBEDDINGS_KEY, None)
    if prompt_embeddings is None:
        raise CheckpointError(f"{weights_path} has no {PROMPT_EMBEDDINGS_KEY} tensor")
    if tuple(prompt_embeddings.shape) != (len(metadata.site_ids), metadata.embed_dim):
        raise CheckpointError(
            f"{PROMPT_EMBEDDINGS_KEY} has shape {tuple(prompt_embeddings.shape)}, "
            f"expected ({len(metadata.site_ids)}, {metadata.embed_dim})"
        )

    projection_keys = [key for key in tensors if key.startswith(TEXT_PROJECTION_PREFIX)]
    text_projection = {key.removeprefix(TEXT_PROJECTION_PREFIX): tensors.pop(key) for key in projection_keys}

    encoder = build_image_encoder(metadata)
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"image encoder weights in {weights_path} do not match {METADATA_FILE}: {exc}") from None
    encoder.eval().to(device)
    return Checkpoint(metadata, encoder, prompt_embeddings.to(device), path, text_projection or None)


# Import of published HCL-AL checkpoints.


def read_hclal_params(params_path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Read a published ``params.pth`` with the safe tensor-only unpickler.

    Raises
    ------
    CheckpointError
        If the file is missing, encrypted, or needs arbitrary unpickling while
        ``trust_pickle`` is false.
    """
    if not params_path.is_file():
        raise CheckpointError(f"{params_path} not found; pass the folder that contains {HCLAL_PARAMS_FILE}")
    with params_path.open("rb") as handle:
        head = handle.read(256)
    if HCLAL_ENCRYPTED_TAG in head:
        raise CheckpointError(
            f"{params_path} is encrypted (tag {HCLAL_ENCRYPTED_TAG.decode()}); decrypt it with the "
            "authors' tool first, then import the decrypted params.pth"
        )

    try:
        params = torch.load(params_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{params_path} contains objects that only arbitrary unpickling can read, which can run "
                f"code from the file ({str(exc).splitlines()[0]}); if you trust its source, "
                "repeat with --trust-pickle"
            ) from None
        LOGGER.warning("reading %s with arbitrary unpickling because --trust-pickle was given", params_path)
        params = torch.load(params_path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{params_path} is not a readable torch checkpoint: {exc}") from None

    if not isinstance(params, dict):
        raise CheckpointError(f"{params_path} holds a {type(params).__name__}, expected a dict")
    missing = [key for key in HCLAL_REQUIRED_KEYS if key not in params]
    if missing:
        raise CheckpointError(f"{params_path} lacks the keys {missing}; is it an HCL-AL checkpoint?")
    return params


def split_hclal_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a published state dict into ``image_encoder``, ``text_encoder`` and ``logit_scale``.

    The ``module.`` prefix that ``torch.nn.DataParallel`` adds is removed when present.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"image_encoder": {}, "text_encoder": {}, "logit_scale": {}}
    for key, value in state_dict.items():
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        head, _, rest = name.partition(".")
        if head not in parts:
            raise CheckpointError(f"unexpected state-dict key {key!r} in an HCL-AL checkpoint")
        parts[head][rest or head] = value
    for head in ("image_encoder", "text_encoder"):
        if not parts[head]:
            raise CheckpointError(f"the checkpoint has no {head}.* weights")
    return parts


def normalizers_from_hclal(crop_normalizers: Sequence[Any], channels: int) -> tuple[Normalizer | None, ...]:
    """Convert the published per-channel ``{mean, stddev, clip}`` entries.

    Entries may be mappings or, in files read with ``--trust-pickle``, objects with
    those attributes. Missing entries (the mask channel in the published models) mean
    no normalisation.
    """
    result: list[Normalizer | None] = []
    for index in range(channels):
        entry = crop_normalizers[index] if index < len(crop_normalizers) else None
        if not entry:
            result.append(None)
            continue
        try:
            values = [entry[name] if isinstance(entry, Mapping) else getattr(entry, name) for name in ("mean", "stddev", "clip")]
        except (KeyError, AttributeError) as exc:
            raise CheckpointError(f"crop normaliser of channel {index} lacks {exc}; expected mean, stddev and clip") from None
        result.append(Normalizer(float(values[0]), float(values[1]), bool(values[2])))
    return tuple(result)


def build_clip_text_encoder(weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Return a CLIP text transformer sized from ``weights`` and loaded with them."""
    from models.networks.clip_text import ClipTextEncoder

    context_length, width = weights["positional_embedding"].shape
    layers = len({key.split(".")[2] for key in weights if key.startswith("transformer.resblocks.")})
    encoder = ClipTextEncoder(
        context_length=context_length,
        vocab_size=weights["token_embedding.weight"].shape[0],
        width=width,
        layers=layers,
        heads=width // CLIP_HEAD_WIDTH,
        embed_dim=weights["text_projection"].shape[1],
    )
    try:
        encoder.load_state_dict(dict(weights), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"text encoder weights do not fit CLIP ViT-B/32: {exc}") from None
    return encoder.eval()


@torch.inference_mode()
def encode_prompts(text_encoder: torch.nn.Module, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Return the ``(len(prompts), embed_dim)`` CLIP embeddings of ``prompts``, each encoded once."""
    from models.networks.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer()
    context_length = text_encoder.context_length
    batches = [
        text_encoder(tokenizer(prompts[start : start + batch_size], context_length=context_length))
        for start in range(0, len(prompts), batch_size)
    ]
    return torch.cat(batches).float()


def infer_level(crop_size: tuple[int, int, int], level: str | None) -> str:
    """Return ``level``, or the level of the published model with this crop size."""
    if level is not None:
        if level not in LEVELS:
            raise CheckpointError(f"level must be one of {LEVELS}, got {level!r}")
        return level
    try:
        return HCLAL_PUBLISHED_CROPS[crop_size]
    except KeyError:
        raise CheckpointError(
            f"cannot tell the level of a model with crop size {crop_size}; pass --level coarse or --level fine"
        ) from None


@dataclass(frozen=True)
class HclalPrompt:
    """One HCL-AL location: its name, the sentence the model was trained with, and our site."""

    name: str
    sentence: str
    site_id: str


def import_hclal(
    model_dir: Path,
    prompts: Sequence[HclalPrompt] | Mapping[str, Sequence[HclalPrompt]],
    out_dir: Path,
    vocabulary_id: str,
    vocabulary_sha256: str,
    level: str | None = None,
    trust_pickle: bool = False,
) -> CheckpointMetadata:
    """Convert a published HCL-AL ``params.pth`` into a checkpoint of our format.

    Parameters
    ----------
    model_dir
        Folder that contains ``params.pth``.
    prompts
        The locations of this model's level, or a mapping from level to locations
        (see :func:`prompts_from_hclal_import`). Each has the description sentence the
        model was trained with and the site id it maps to in our vocabulary.
    out_dir
        Output checkpoint folder.
    vocabulary_id, vocabulary_sha256
        Identity of our site vocabulary, recorded in the metadata.
    level
        ``coarse`` or ``fine``; by default taken from the published crop sizes.
    trust_pickle
        Allow arbitrary unpickling; only for files from a trusted source.

    Notes
    -----
    Each prompt is encoded once with the checkpoint's own CLIP text encoder, and the
    text encoder itself is not stored.
    """
    params_path = Path(model_dir) / HCLAL_PARAMS_FILE
    params = read_hclal_params(params_path, trust_pickle=trust_pickle)
    parts = split_hclal_state(params["state_dict"])

    crop_size = tuple(int(v) for v in params["crop_size"])
    level = infer_level(crop_size, level)  # type: ignore[arg-type]
    if isinstance(prompts, Mapping):
        prompts = prompts.get(level, [])
    if not prompts:
        raise CheckpointError(
            f"no {level} HCL-AL location maps to a site of our vocabulary; check the library files"
        )
    image_weights = parts["image_encoder"]
    channels = int(image_weights["in_block.conv.weight"].shape[1])
    width = image_weights["in_block.conv.weight"].shape[0] / STEM_CHANNELS
    metadata = CheckpointMetadata(
        level=level,
        crop_size=crop_size,  # type: ignore[arg-type]
        spacing=tuple(float(v) for v in params["spacing"]),  # type: ignore[arg-type]
        site_ids=[prompt.site_id for prompt in prompts],
        prompts=[prompt.sentence for prompt in prompts],
        vocabulary_id=vocabulary_id,
        vocabulary_sha256=vocabulary_sha256,
        width=width,
        embed_dim=int(image_weights["fc.weight"].shape[0]),
        channels=DEFAULT_CHANNELS[:channels],
        interpolation=DEFAULT_INTERPOLATION[:channels],
        normalizers=normalizers_from_hclal(params["crop_normalizers"], channels),
        text_encoder="clip-vit-b32 (from the imported checkpoint)",
        source=hclal_source_summary(params, params_path, parts, [p.name for p in prompts]),
    )

    encoder = build_image_encoder(metadata)
    try:
        encoder.load_state_dict(image_weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"image encoder weights of {params_path} do not fit crop size {crop_size}: {exc}") from None

    text_encoder = build_clip_text_encoder(parts["text_encoder"])
    embeddings = encode_prompts(text_encoder, metadata.prompts)
    save_checkpoint(Path(out_dir), encoder, embeddings, metadata)
    LOGGER.info(
        "imported %s (%s level, epoch %s): %d prompts", params_path, metadata.level,
        params.get("epoch"), len(prompts),
    )
    return metadata


def hclal_source_summary(
    params: Mapping[str, Any], params_path: Path, parts: Mapping[str, Mapping[str, torch.Tensor]], names: list[str]
) -> dict[str, Any]:
    """Return the provenance recorded in an imported checkpoint's ``source`` field."""
    logit_scale = parts["logit_scale"].get("logit_scale")
    return {
        "format": "HCL-AL params.pth",
        "file": params_path.name,
        "file_sha256": file_sha256(params_path),
        "net": str(params.get("net", "")),
        "epoch": params.get("epoch"),
        "interpolation": str(params.get("interpolation", "")),
        "checkpoint_logit_scale": None if logit_scale is None else math.exp(float(logit_scale)),
        "hclal_names": names,
    }


def prompts_from_hclal_import(result: HclalImport, vocabulary: Vocabulary) -> dict[str, list[HclalPrompt]]:
    """Return the matched HCL-AL locations of each level as prompts, in library order.

    A coarse location that matches one of our fine sites is recorded under that site's
    coarse parent, because the coarse model ranks coarse sites. A location without a
    description is encoded by its name, with a warning.
    """
    prompts: dict[str, list[HclalPrompt]] = {level: [] for level in LEVELS}
    for entry in result.entries:
        if entry.site_id is None or entry.level not in prompts:
            continue
        site = vocabulary.site(entry.site_id)
        site_id = site.parent if entry.level == "coarse" and site.level == "fine" and site.parent else site.id
        if entry.description is None:
            LOGGER.warning("HCL-AL %s location %r has no description; encoding its name", entry.level, entry.name)
        prompts[entry.level].append(HclalPrompt(entry.name, entry.description or entry.name, site_id))
    return prompts
