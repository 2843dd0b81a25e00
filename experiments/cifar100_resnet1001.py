"""ResNet-1001 (bottleneck), full pre-activation, CIFAR-100: 22.71% (Table 4; 22.68+-0.22)."""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "cifar100_resnet1001"
    c.paper_error = 22.71
    c.dataset = "cifar100"
    c.model.num_classes = 100
    c.model.depth = 1001
    c.model.block = "bottleneck"
    c.model.stride_on = "1x1"  # resnet-1k-layers, the paper's ResNet-1001 code (experiments/cifar1001.py)
    c.model.scan_unroll = 10  # 10 units per loop iteration: why in experiments/cifar1001.py
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
