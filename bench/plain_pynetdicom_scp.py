"""The plainest pynetdicom storage SCP: the ceiling of any receiver built on pynetdicom.

``bench/ingest.py`` runs it beside ``hclal scp`` and DCMTK ``storescp``. It accepts
CT Image Storage in the uncompressed transfer syntaxes, sets TCP_NODELAY and an
unlimited PDU size as ``hclal scp`` does, and writes the received bytes to a file
without any check, fsync or database row. What separates ``hclal scp`` from it is
the cost of our own work per instance; what separates it from ``storescp`` is the
cost of pynetdicom. Usage::

    python bench/plain_pynetdicom_scp.py PORT FOLDER
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

AE_TITLE = "PLAINSCP"


def main() -> None:
    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def store(event: evt.Event) -> int:
        path = folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_C_STORE, store)]
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
