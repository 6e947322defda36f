"""Example config of ``clip_apply -i inference_config.py``.

The input CSV lists lesions in the reference form: ``image_path`` (CT),
``image_path1`` (PET in SUV), ``image_path2`` (lesion mask), each a NIfTI file or a
DICOM series folder, and in box mode the box columns ``x, y, z`` (centre, world LPS mm)
and ``width, height, depth`` (mm). The output CSV adds the ranked coarse and fine sites,
``pred`` (a site id) and the site's SNOMED CT code.
"""

input_csv = "data/test.csv"
# Default: <input stem>_<mode>_pred.csv beside the input.
output_csv = "results/test_box_pred.csv"

# "box": one lesion per row, the mask channel is the box.
# "mask": one row per study; every 26-connected component of the mask is a lesion.
mode = "box"

# Checkpoint folders; leave both unset to use the demo model shipped with the worker.
coarse_model = "runs/coarse/model"
fine_model = "runs/fine/model"

# Coarse sites whose fine children are ranked.
top_k = 3
# Predictions whose probability is below this are flagged uncertain.
uncertain_below = 0.5
# When set, fine probabilities below it are averaged with their parent's coarse probability.
fusion_below = None
# Lesions per encoder call, and the torch device: auto, cpu, cuda or cuda:N.
batch_size = 16
device = "auto"
