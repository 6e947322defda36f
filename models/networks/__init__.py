"""Neural networks of HCL-AL: the 3-D image encoder and the text encoders.

Parameter names follow the published HCL-AL checkpoints (the ``image_encoder.*`` and
``text_encoder.*`` keys without the ``module.`` prefix of ``torch.nn.DataParallel``),
so their weights load with ``load_state_dict``.
"""

from models.networks.clip_text import ClipTextEncoder
from models.networks.image_encoder import ImageEncoder

__all__ = ["ClipTextEncoder", "ImageEncoder"]
