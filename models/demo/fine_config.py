"""Fine model of the demo, trained on the same phantom studies as the coarse model.

The crop is 16 x 16 x 16 voxels at 8 mm (a 128 mm cube). ``reproduce.sh`` trains this
model at the same time as the coarse one, so no coarse predictions exist yet: the
fine batches group each anchor with the fine sites under its true coarse site and fill
the rest at random. The published recipe also adds the sites under the coarse model's
predictions; set ``coarse_model`` to a trained coarse checkpoint to do so.
"""

stage = "fine"
phantom_seeds = list(range(100, 110))
phantom_lesions = 150
output_dir = "runs/demo/fine"
# The phantom places lesions in about 300 of the fine sites; prompts of the others were
# never trained against an image, so the checkpoint keeps only the trained ones.
prompt_sites = "trained"

crop_size = (16, 16, 16)
spacing = (8.0, 8.0, 8.0)
width = 0.25
embed_dim = 128

epochs = 20
batch_size = 32
learning_rate = 2e-3
lr_milestones = (6,)
skip_top = 5
related_fraction = 0.8

jitter_mm = 3.0
rotation_degrees = 10.0
rotation_probability = 0.5
scale_range = (0.9, 1.1)
scale_probability = 0.5

save_every = 2
seed = 0
device = "cpu"
num_workers = 2
