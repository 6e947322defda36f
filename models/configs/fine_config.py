"""Example config of ``clip_fine_train -i fine_config.py`` (or ``hclal train fine -i ...``).

Fine batches are built from the coarse model's predictions: each lesion's
``coarse_labels`` column in the CSV, or, when the column is missing, the top
``coarse_predictions_top`` sites that ``coarse_model`` ranks for it before training.
The values below are the published HCL-AL fine training.
"""

train_csv = "data/train_fine.csv"
# phantom_seeds = list(range(40))
coarse_model = "runs/coarse/model"
coarse_predictions_top = 3

output_dir = "runs/fine"

crop_size = (64, 64, 64)
spacing = (1.5, 1.5, 1.5)
# Spacing factors of the views stacked as input channels; (1.0, 0.5) would add a view at
# half the spacing around the same centre. The published models have one view.
scales = (1.0,)
width = 1.0

epochs = 300
batch_size = 64
learning_rate = 1e-4
weight_decay = 5e-4
lr_milestones = (100, 200)
lr_gamma = 0.1

# The 5 highest-scoring wrong texts per row are skipped. With exact labels, such as a
# phantom's, use 0 so that neighbouring sites stay in the loss.
skip_top = 5
label_smoothing = 0.1

# At most 80 % of a batch comes from the fine sites under the anchor's true and
# predicted coarse sites; the rest are random other fine sites.
related_fraction = 0.8

jitter_mm = 3.0
rotation_degrees = 10.0
rotation_probability = 0.5
scale_range = (0.8, 1.2)
scale_probability = 0.5

save_every = 10
resume = True
seed = 0
device = "auto"
num_workers = 4
