"""ImageNet ResNet-152, full pre-activation: Table 5, 21.1% top-1 / 5.5% top-5 (320 crop)."""

from resnet_v2_jax import config as config_lib


def get_config():
    return config_lib.imagenet(152, 21.1, "scale", 320)
