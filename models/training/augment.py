"""Random crop geometry for training: centre jitter, rotation and isotropic scaling.

A crop is sampled on a grid with axes ``matrix`` (columns are the x, y and z steps in
LPS millimetres) around a jittered lesion centre. Rotating the axes turns the crop,
and scaling them changes the field of view while the voxel count stays fixed, which
is how the published training varies lesion size and pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class CropAugmentation:
    """Ranges of the random crop transform; zero ranges or probabilities switch a part off."""

    jitter_mm: float = 3.0
    rotation_degrees: float = 10.0
    rotation_probability: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    scale_probability: float = 0.5

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return a random ``(centre_offset_mm, axes)``: a 3-vector and a 3x3 matrix.

        ``axes`` is a rotation about a uniformly random axis by an angle uniform in
        ``[0, rotation_degrees]`` (with ``rotation_probability``), times an isotropic scale
        uniform in ``scale_range`` (with ``scale_probability``); the crop spacing is
        multiplied by it, so a scale above 1 shows a larger field of view.
        """
        offset = rng.uniform(-self.jitter_mm, self.jitter_mm, size=3) if self.jitter_mm > 0 else np.zeros(3)
        axes = np.eye(3)

        if self.rotation_degrees > 0 and rng.random() < self.rotation_probability:
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            angle = np.deg2rad(rng.uniform(0.0, self.rotation_degrees))
            axes = Rotation.from_rotvec(axis * angle).as_matrix()

        if rng.random() < self.scale_probability:
            axes = axes * rng.uniform(*self.scale_range)
        return offset, axes


NO_AUGMENTATION = CropAugmentation(0.0, 0.0, 0.0, (1.0, 1.0), 0.0)
