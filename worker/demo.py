"""``hclal demo``: the whole data path on one machine with no servers.

A phantom study is sent by C-STORE to the worker's SCP on a free loopback port;
the in-process queue analyses it with the shipped demo model, and the SR goes to
a small receiving PACS (a pynetdicom storage SCP writing to a folder). Everything
lives under one output folder: the study, the worker's data folder (SQLite
database, spool, reports), the files the PACS received and a PNG preview.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from worker.config import Destination, Settings, load_settings

LOGGER = logging.getLogger(__name__)

PACS_AE_TITLE = "DEMOPACS"
SR_CLASSES = (Comprehensive3DSRStorage, EnhancedSRStorage, ComprehensiveSRStorage)
SUCCESS = 0x0000


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ReceivingPacs:
    """A storage SCP on 127.0.0.1 that writes every received SR to ``folder``."""

    folder: Path
    port: int = field(default_factory=free_port)
    received: list[Path] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Start listening in a background thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=PACS_AE_TITLE)
        ae.add_supported_context(Verification)
        for sop_class in SR_CLASSES:
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        path = self.folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        self.received.append(path)
        self.arrived.set()
        return SUCCESS

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()


@dataclass(frozen=True)
class DemoResult:
    """Result of a demo run: one row per lesion and the files written."""

    rows: list[dict]
    report_path: Path
    preview_path: Path
    output_dir: Path
    seconds: float


def demo_settings(output_dir: Path, pacs_port: int) -> Settings:
    """Return embedded-default settings rooted in ``output_dir`` with the demo PACS as destination."""
    return load_settings(
        data_dir=output_dir / "worker",
        database_url=f"sqlite:///{output_dir / 'worker' / 'hclal.sqlite3'}",
        broker_url="",
        scp_host="127.0.0.1",
        scp_port=free_port(),
        destinations=[Destination(ae_title=PACS_AE_TITLE, host="127.0.0.1", port=pacs_port)],
        delivery_backoff=0.5,
    )


def lesion_rows(settings: Settings, truth: dict) -> list[dict]:
    """Join the newest analysis's findings with the phantom's truth, one row per lesion."""
    from sqlalchemy import select

    from worker.db.models import Analysis, Finding, Lesion
    from worker.db.session import get_engine, session_scope

    truth_by_segment = {item["segment_number"]: item for item in truth["lesions"]}
    with session_scope(get_engine(settings.effective_database_url)) as session:
        analysis_id = session.scalar(select(Analysis.id).order_by(Analysis.id.desc()))
        results = session.execute(
            select(Lesion, Finding).join(Finding).where(Lesion.analysis_id == analysis_id)
            .order_by(Lesion.segment_number, Lesion.component)
        ).all()
        rows = []
        for lesion, finding in results:
            expected = truth_by_segment.get(lesion.segment_number, {})
            rows.append(
                {
                    "segment": lesion.segment_number,
                    "true_site": expected.get("site_id"),
                    "predicted_site": finding.site_id,
                    "predicted_name": finding.site_name,
                    "probability": finding.probability,
                    "uncertain": finding.uncertain,
                    "suv_max": lesion.suv_max,
                    "volume_ml": lesion.volume_ml,
                    "centroid_mm": [lesion.centroid_x_mm, lesion.centroid_y_mm, lesion.centroid_z_mm],
                    "correct": expected.get("site_id") == finding.site_id,
                }
            )
    return rows


def run_demo(output_dir: Path, seed: int, lesions: int, progress=None, timeout: float = 600.0) -> DemoResult:  # noqa: ANN001
    """Run the demo into ``output_dir`` and return its results.

    ``progress`` is called with a short text before each step.

    Raises
    ------
    DemoError
        If the study is not analysed, or no report reaches the PACS, within ``timeout`` seconds.
    """
    import time

    from dicom.network.scp import create_scp
    from dicom.network.sender import dicom_files, send_files
    from dicom.phantom import generate_study

    say = progress or (lambda text: None)
    started = time.monotonic()
    if output_dir.exists() and any(output_dir.iterdir()):
        # The same seed gives the same UIDs, which the worker would take as duplicates.
        raise DemoError(f"output folder {output_dir} is not empty; pass a new or empty folder to --output")
    output_dir.mkdir(parents=True, exist_ok=True)

    pacs = ReceivingPacs(output_dir / "pacs")
    settings = demo_settings(output_dir, pacs.port)
    say("loading the models")
    _load_models(settings)

    say(f"generating phantom study (seed {seed}, {lesions} lesions)")
    study_dir = output_dir / "study"
    generate_study(study_dir, seed=seed, lesions=lesions)
    truth = json.loads((study_dir / "truth.json").read_text())

    pacs.start()
    scp = create_scp(settings)
    scp.start()
    try:
        files = dicom_files(study_dir)
        say(f"sending {len(files)} instances to {settings.ae_title} at 127.0.0.1:{settings.scp_port}")
        send_files(files, "127.0.0.1", settings.scp_port, settings.ae_title, calling_ae_title="DEMOSCU")

        say("analysing and sending the report back")
        _wait_for_report(settings, pacs, timeout)
    finally:
        scp.stop()
        pacs.stop()

    rows = lesion_rows(settings, truth)
    say("drawing the preview")
    preview = write_preview(study_dir, rows, output_dir / "preview.png")
    return DemoResult(rows, pacs.received[0], preview, output_dir, time.monotonic() - started)


def _load_models(settings: Settings) -> None:
    """Load the localizer now, so that a missing or invalid model stops the demo at once."""
    from models.checkpoint import CheckpointError
    from worker.localizer_cache import get_localizer

    try:
        get_localizer(settings)
    except (CheckpointError, FileNotFoundError) as exc:
        raise DemoError(
            f"cannot load the models: {exc}; set HCLAL_COARSE_MODEL and HCLAL_FINE_MODEL, "
            "or rebuild the demo model with models/demo/reproduce.sh"
        ) from exc


def _wait_for_report(settings: Settings, pacs: ReceivingPacs, timeout: float) -> None:
    """Wait until the PACS has the report; stop early when the analysis failed."""
    import time

    from sqlalchemy import select

    from worker.db.models import Analysis, AnalysisState
    from worker.db.session import get_engine, session_scope

    deadline = time.monotonic() + timeout
    engine = get_engine(settings.effective_database_url)
    while not pacs.arrived.wait(0.5):
        with session_scope(engine) as session:
            states = set(session.scalars(select(Analysis.state)))
        if AnalysisState.FAILED in states or AnalysisState.DELIVERY_FAILED in states:
            raise DemoError(_missing_report_reason(settings, timeout))
        if time.monotonic() > deadline:
            raise DemoError(_missing_report_reason(settings, timeout))


def _missing_report_reason(settings: Settings, timeout: float) -> str:
    from sqlalchemy import select

    from worker.db.models import Analysis
    from worker.db.session import get_engine, session_scope

    with session_scope(get_engine(settings.effective_database_url)) as session:
        analysis = session.scalars(select(Analysis).order_by(Analysis.id.desc())).first()
        if analysis is None:
            return f"the study was not queued within {timeout:.0f} s; see the log for the SCP's reasons"
        return (
            f"no report reached the PACS; analysis {analysis.id} is "
            f"{analysis.state.value}" + (f": {analysis.error}" if analysis.error else "")
        )


def write_preview(study_dir: Path, rows: list[dict], path: Path) -> Path:
    """Draw a coronal PET maximum-intensity projection with each lesion marked and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dicom.study import load_study

    inputs = load_study([study_dir])
    volume = inputs.pet if inputs.pet is not None else inputs.ct
    # Coronal MIP: maximum over the row axis (anterior-posterior for axial slices).
    mip = volume.array.max(axis=1)
    inverse = np.linalg.inv(volume.affine)

    figure, axes = plt.subplots(figsize=(6, 9), dpi=100)
    # Slices run from feet to head, so the first slice is drawn at the bottom.
    axes.imshow(mip, cmap="gray_r", origin="lower", aspect=_aspect(volume.affine), vmin=0,
                vmax=float(np.percentile(mip, 99.5)) or 1.0)
    for row in rows:
        slice_index, _, column = (inverse @ np.array([*row["centroid_mm"], 1.0]))[:3]
        colour = "tab:green" if row["correct"] else "tab:red"
        axes.plot(column, slice_index, "o", markersize=10, markerfacecolor="none", color=colour)
        axes.annotate(row["predicted_name"], (column, slice_index), xytext=(8, 0), textcoords="offset points",
                      fontsize=7, color=colour)
    axes.set_title("PET MIP (SUV) with predicted lesion sites")
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _aspect(affine) -> float:  # noqa: ANN001
    import numpy as np

    slice_step = float(np.linalg.norm(affine[:3, 0]))
    column_step = float(np.linalg.norm(affine[:3, 2]))
    return slice_step / column_step
