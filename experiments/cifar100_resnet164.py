"""ResNet-164 (bottleneck), full pre-activation, CIFAR-100: 24.33% (Table 3/4); original unit 25.16%."""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "cifar100_resnet164"
    c.paper_error = 24.33
    c.dataset = "cifar100"
    c.model.num_classes = 100
    c.model.depth = 164
    c.model.block = "bottleneck"
    c.model.scan_unroll = 17  # no loop: why in experiments/cifar10_resnet164.py
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
