"""End-to-end latency: last instance sent to the worker until its SR is stored at the PACS.

The script generates phantom studies in a temporary folder first (untimed). It
then runs the embedded defaults of ``hclal demo`` in this process: the worker's
SCP on a free loopback port, the in-process queue, SQLite, and a receiving PACS
(a pynetdicom storage SCP on 127.0.0.1). One warm-up study loads the models, then
the measured studies are sent one after another by C-STORE over one association
each (DCMTK ``storescu`` when installed), each only after the previous one's SR
arrived.

The latency of a study runs from the end of its transfer (association released
after the last C-STORE response) to the moment the PACS has written its SR. The
reference, measured in the same run, is the transfer time of the study itself,
so ``ratio_p50`` compares the analysis with the bare C-STORE on the same machine
and load.

The shipped demo model is used when ``models/demo`` holds its ``coarse/`` and
``fine/`` checkpoints; otherwise random tiny models (``tests/support/tiny_models.py``) stand in, and the output
says so in ``model``.

Prints one JSON line. Run it from the repository root: ``python bench/e2e.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom.network.sender import dicom_files, send_files  # noqa: E402
from dicom.phantom import generate_study  # noqa: E402
from tests.support.dcmtk import dcmtk_tool  # noqa: E402
from worker.demo import ReceivingPacs, demo_settings  # noqa: E402

GOAL_P50_SECONDS = 5.0
CALLING_AE_TITLE = "BENCHSCU"
WARM_UP_SEED = 1000
SR_TIMEOUT = 600.0


@dataclass
class TimedPacs(ReceivingPacs):
    """A receiving PACS that records when the SR of each study was stored."""

    stored_at: dict[str, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def _on_store(self, event) -> int:  # noqa: ANN001
        status = super()._on_store(event)
        with self.changed:
            self.stored_at[str(event.dataset.StudyInstanceUID)] = time.perf_counter()
            self.changed.notify_all()
        return status

    def wait_for(self, study_uid: str, timeout: float) -> float:
        """Return when the SR of ``study_uid`` was stored, waiting up to ``timeout`` seconds."""
        with self.changed:
            if not self.changed.wait_for(lambda: study_uid in self.stored_at, timeout):
                raise TimeoutError(f"no SR of study {study_uid} reached the PACS within {timeout:.0f} s")
            return self.stored_at[study_uid]


@dataclass(frozen=True)
class StudyTiming:
    instances: int
    send_seconds: float
    latency_seconds: float


def model_settings(work: Path) -> tuple[dict[str, Path], str]:
    """Return the model settings and a description: the demo model, or random tiny models."""
    from models.inference import DEMO_MODEL_DIR

    if (DEMO_MODEL_DIR / "coarse").is_dir() and (DEMO_MODEL_DIR / "fine").is_dir():
        return {}, "demo"
    from tests.support.tiny_models import write_tiny_models

    coarse, fine = write_tiny_models(work / "tiny-models")
    description = "random tiny models (models/demo has no coarse/ and fine/ checkpoints)"
    return {"coarse_model": coarse, "fine_model": fine}, description


def sender_name() -> str:
    return "DCMTK storescu" if dcmtk_tool("storescu") else "pynetdicom (dicom.network.sender)"


def send_study(files: list[Path], port: int, ae_title: str) -> None:
    """Send ``files`` over one association, with DCMTK storescu when it is installed.

    NOTE: pynetdicom 3.0's requestor can lose a C-STORE response to its own
    reactor thread when the CPU is starved, and then waits for the DIMSE timeout.
    storescu has no such race, so it is preferred and pynetdicom is the fallback.
    """
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        send_files(files, "127.0.0.1", port, ae_title, calling_ae_title=CALLING_AE_TITLE)
        return
    # --required proposes the SOP classes of the files, Segmentation Storage among them.
    command = [
        storescu, "--required", "-aet", CALLING_AE_TITLE, "-aec", ae_title, "127.0.0.1", str(port),
        *map(str, files),
    ]  # fmt: skip
    # TCP_NODELAY=1 makes DCMTK disable Nagle's algorithm, as the worker's SCP does.
    completed = subprocess.run(
        command, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"storescu exited with status {completed.returncode}: {completed.stderr[-2000:]}")


def run_study(folder: Path, port: int, ae_title: str, pacs: TimedPacs) -> StudyTiming:
    """Send one study and wait for its SR; return its C-STORE time and latency."""
    import pydicom

    files = dicom_files(folder)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    started = time.perf_counter()
    send_study(files, port, ae_title)
    last_sent = time.perf_counter()
    stored = pacs.wait_for(study_uid, SR_TIMEOUT)
    return StudyTiming(len(files), last_sent - started, stored - last_sent)


def measure(studies: list[Path], warm_up: Path, work: Path) -> tuple[list[StudyTiming], float, str]:
    """Run the warm-up and measured studies; return their timings, the warm-up latency and the model."""
    from dicom.network.scp import create_scp

    overrides, model = model_settings(work)
    pacs = TimedPacs(work / "pacs")
    pacs.start()
    settings = demo_settings(work / "run", pacs.port).model_copy(update=overrides)
    scp = create_scp(settings)
    scp.start()
    try:
        cold = run_study(warm_up, settings.scp_port, settings.ae_title, pacs).latency_seconds
        timings = [run_study(folder, settings.scp_port, settings.ae_title, pacs) for folder in studies]
    finally:
        scp.stop()
        pacs.stop()
    return timings, cold, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10, help="Measured studies (default 10).")
    parser.add_argument("--lesions", type=int, default=3, help="Lesions per phantom study (default 3).")
    parser.add_argument(
        "--log-level", default="WARNING", help="Level of the worker's log messages on stderr (default WARNING)."
    )
    arguments = parser.parse_args()
    if arguments.studies < 1 or arguments.lesions < 1:
        parser.error("--studies and --lesions must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    for name in ("worker", "dicom", "models"):
        logging.getLogger(name).setLevel(arguments.log_level.upper())
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="hclal-bench-e2e-") as temporary:
        work = Path(temporary)
        warm_up = work / "studies" / "warm-up"
        generate_study(warm_up, seed=WARM_UP_SEED, lesions=arguments.lesions)
        studies = []
        for seed in range(1, arguments.studies + 1):
            folder = work / "studies" / f"seed-{seed}"
            generate_study(folder, seed=seed, lesions=arguments.lesions)
            studies.append(folder)
        timings, cold, model = measure(studies, warm_up, work)

    latencies = np.array([timing.latency_seconds for timing in timings])
    sends = np.array([timing.send_seconds for timing in timings])
    p50, p95 = np.percentile(latencies, [50, 95])
    reference_p50 = float(np.percentile(sends, 50))
    counts = [timing.instances for timing in timings]
    print(
        json.dumps(
            {
                "benchmark": "e2e",
                "studies": len(timings),
                "lesions_per_study": arguments.lesions,
                "instances_per_study": [min(counts), max(counts)],
                "model": model,
                "sender": sender_name(),
                "queue": "in-process",
                "database": "sqlite",
                "p50_seconds": round(float(p50), 2),
                "p95_seconds": round(float(p95), 2),
                "max_seconds": round(float(latencies.max()), 2),
                "warm_up_seconds": round(cold, 2),
                "reference": "C-STORE of the study over one association, connect to release",
                "reference_p50_seconds": round(reference_p50, 2),
                "ratio_p50": round(float(p50) / reference_p50, 3),
                "goal_p50_seconds": GOAL_P50_SECONDS,
                "within_goal": bool(p50 <= GOAL_P50_SECONDS),
                "cpu_count": os.cpu_count(),
                "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
