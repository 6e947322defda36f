"""The localizer of a worker process, loaded once on first use and reused by every task.

Loading on first use, not at import, keeps CUDA uninitialised until the worker
process that uses it runs its first task (CUDA does not survive a fork).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from worker.config import Settings

if TYPE_CHECKING:
    from models.inference import Localizer

LOGGER = logging.getLogger(__name__)

_LOCALIZERS: dict[tuple[str, str, str, int, float], "Localizer"] = {}
_LOCK = threading.Lock()


def _key(settings: Settings) -> tuple[str, str, str, int, float]:
    return (
        str(settings.coarse_model or ""),
        str(settings.fine_model or ""),
        settings.device,
        settings.coarse_top_k,
        settings.uncertain_below,
    )


def get_localizer(settings: Settings) -> "Localizer":
    """Return this process's localizer for the configured models, loading it the first time."""
    from models.inference import Localizer

    key = _key(settings)
    with _LOCK:
        if key not in _LOCALIZERS:
            LOGGER.info("loading models (coarse %s, fine %s)", key[0] or "demo", key[1] or "demo")
            _LOCALIZERS[key] = Localizer.from_settings(settings)
        return _LOCALIZERS[key]


def model_name(localizer: "Localizer", level: str) -> str | None:
    """Return ``<folder name> sha256:<first 12 hex>`` of the coarse or fine checkpoint."""
    ranked = localizer.coarse if level == "coarse" else localizer.fine
    if ranked is None:
        return None
    checkpoint = ranked.checkpoint
    return f"{checkpoint.path.name} sha256:{checkpoint.metadata.weights_sha256[:12]}"


def checkpoint_hashes(localizer: "Localizer") -> list[str]:
    """Return ``"<level> sha256:<hex>"`` for every loaded checkpoint, for the SR."""
    hashes = []
    for level, ranked in (("coarse", localizer.coarse), ("fine", localizer.fine)):
        if ranked is not None:
            hashes.append(f"{level} sha256:{ranked.checkpoint.metadata.weights_sha256}")
    return hashes


def check_model_files(settings: Settings) -> None:
    """Raise ``FileNotFoundError`` naming the fix when a configured checkpoint folder is missing.

    Only files are checked, so that a worker does not initialise torch or CUDA before
    it forks.
    """
    from models.inference import COARSE_DIR, DEMO_MODEL_DIR, FINE_DIR

    for level, configured, default in (
        ("coarse", settings.coarse_model, DEMO_MODEL_DIR / COARSE_DIR),
        ("fine", settings.fine_model, DEMO_MODEL_DIR / FINE_DIR),
    ):
        folder = configured or default
        if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
            variable = f"HCLAL_{level.upper()}_MODEL"
            raise FileNotFoundError(
                f"{level} model folder {folder} has no model.json and model.safetensors; set {variable} "
                "to a checkpoint folder, or rebuild the demo model with models/demo/reproduce.sh"
            )
