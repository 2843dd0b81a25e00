"""ImageNet ResNet-200, full pre-activation: Table 5, 20.7% top-1 / 5.3% top-5 (320 crop, scale aug).

Paper's scale augmentation (shorter side in [256, 480], 224 crop, flip, and AlexNet's PCA
lighting, "the standard color augmentation"), evaluated on the full 320x320 crop; with fb.resnet.torch's random-sized crops (`imagenet_augment=inception`) 20.1/4.8.
Batch 256, lr 0.1 /10 at epochs 30 and 60, 90 epochs; bfloat16 compute.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    return config_lib.imagenet(200, 20.7, "scale", 320)
