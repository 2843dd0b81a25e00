"""ImageNet ResNet-50, full pre-activation (fb.resnet.torch recipe; no number in the paper).

Centre 224 crop of the 256-resized image; random-sized crops, colour jitter and lighting.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    return config_lib.imagenet(50, -1.0, "inception", 224)
