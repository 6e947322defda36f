"""Fine model of the demo, trained on the same phantom studies as the coarse model.

The crop is 16 x 16 x 16 voxels at 8 mm (a 128 mm cube). ``reproduce.sh`` trains this
model after the coarse one: every training lesion is also cropped on the coarse grid
and ranked by the trained coarse model, and each fine batch groups an anchor with the
fine sites under its true coarse site and under the coarse model's top 3 (at most 80 %
of the batch), the rest drawn at random, as in the published recipe.
"""

stage = "fine"
phantom_seeds = list(range(100, 220))
phantom_lesions = 125
crop_copies = 5
output_dir = "runs/demo/fine"
coarse_model = "runs/demo/coarse/model"
# The phantom places lesions in about 300 of the fine sites; prompts of the others were
# never trained against an image, so the checkpoint keeps only the trained ones.
prompt_sites = "trained"

crop_size = (16, 16, 16)
spacing = (8.0, 8.0, 8.0)
width = 0.5
embed_dim = 128

epochs = 20
batch_size = 32
learning_rate = 2e-3
lr_milestones = (14, 18)
# 5 in the published recipe, for debatable real labels. Phantom labels are exact, and
# keeping the closest wrong sites in the loss raised held-out top-1 from 66.5 % to 87.5 %.
skip_top = 0
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
