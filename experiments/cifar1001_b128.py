"""ResNet-1001 (bottleneck), full pre-activation, CIFAR-10 at the paper's batch 128: 4.92% (Table 4).

The paper's iteration schedule: 0.01 warm-up for 400 iterations, lr 0.1, /10 at 32k and 48k,
stop at 64k; BN statistics over 64 images as on the paper's 2 GPUs.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "cifar1001_b128"
    c.paper_error = 4.92
    c.model.depth = 1001
    c.model.block = "bottleneck"
    c.model.stride_on = "1x1"  # resnet-1k-layers, the paper's ResNet-1001 code (experiments/cifar1001.py)
    c.model.scan_unroll = 10  # 10 units per loop iteration: why in experiments/cifar1001.py
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
