#!/usr/bin/env bash
# Train the demo model, coarse first and then fine, on phantom studies and copy the two
# checkpoint folders into models/demo/. The fine run ranks every training lesion with
# the new coarse model and builds its batches around those predictions, as the
# published recipe does. Run from the repository root; runs/demo/ keeps the logs, the
# training state and the loss/accuracy curves. Then measure on held-out phantoms:
#   python -m models.demo.evaluate_heldout --seeds 5000-5019
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p runs/demo

python -m worker train coarse -i models/demo/coarse_config.py > runs/demo/coarse.log 2>&1 \
  || { echo "coarse training failed, see runs/demo/coarse.log" >&2; exit 1; }
python -m worker train fine -i models/demo/fine_config.py > runs/demo/fine.log 2>&1 \
  || { echo "fine training failed, see runs/demo/fine.log" >&2; exit 1; }

for level in coarse fine; do
  mkdir -p "models/demo/$level"
  cp "runs/demo/$level/model/model.safetensors" "runs/demo/$level/model/model.json" "models/demo/$level/"
done
echo "demo model written to models/demo/coarse and models/demo/fine"
