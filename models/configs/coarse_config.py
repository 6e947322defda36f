"""Example config of ``clip_coarse_train -i coarse_config.py`` (or ``hclal train coarse -i ...``).

A config is a Python file of plain assignments, run with ``runpy``; names starting with
``_`` are private helpers. Every setting is optional except a data source. The values
below are the published HCL-AL coarse training; see ``models/demo/`` for a small model
trained on phantom studies.
"""

# Data: a training list CSV in the reference form (CT, PET and mask paths, box centre and
# size in mm, coarse_gt, fine_gt), or phantom study seeds generated in memory.
train_csv = "data/train_coarse.csv"
# phantom_seeds = list(range(40))
# phantom_lesions = 40  # lesions per phantom study

# Run folder: training_state.pt (for resume), history.json, loss.png, accuracy.png and
# the checkpoint folder model/ (model.safetensors + model.json).
output_dir = "runs/coarse"

# Crop grid, (x, y, z) voxels and mm, and the image encoder's channel multiplier.
crop_size = (96, 96, 128)
spacing = (2.0, 2.0, 3.0)
width = 1.0

# Optimisation: Adam, lr x0.1 at each milestone epoch.
epochs = 350
batch_size = 32
learning_rate = 1e-4
weight_decay = 5e-4
lr_milestones = (100, 200)
lr_gamma = 0.1

# Loss: the 2 highest-scoring wrong texts per row are skipped, targets smoothed by 0.1.
# With exact labels, such as a phantom's, use 0 so that neighbouring sites stay in the loss.
skip_top = 2
label_smoothing = 0.1

# Coarse batches draw distinct sites from two body regions chosen with these weights.
region_weights = {
    "head": 1, "neck": 2, "chest": 3, "abdomen": 2, "pelvis": 1,
    "axial_skeleton": 1, "upper_limb": 0.5, "lower_limb": 0.5,
}

# Augmentation: centre jitter (mm), rotation (degrees, probability), isotropic scaling.
jitter_mm = 3.0
rotation_degrees = 10.0
rotation_probability = 0.5
scale_range = (0.8, 1.2)
scale_probability = 0.5

# Checkpoints and hardware; several GPUs: torchrun --nproc_per_node N -m worker train coarse -i ...
save_every = 10
resume = True
seed = 0
device = "auto"
num_workers = 4
