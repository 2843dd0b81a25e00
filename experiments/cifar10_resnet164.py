"""CIFAR-10, ResNet-164 (bottleneck), full pre-activation: Table 2(e) / Table 3, 5.46% error.

The paper's recipe: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 (0.01 warm-up for
400 iterations), /10 at 32k and 48k iterations, stop at 64k; pad-crop-flip augmentation.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "cifar10_resnet164"
    c.paper_error = 5.46
    c.model.depth = 164
    c.model.block = "bottleneck"
    # All 17 scanned units of a stage in one loop iteration, so no loop: on one H200 (bf16, batch 128,
    # serial CUDA graphs) 13.8 ms a step, 9,304 images/s (BENCHMARKS.md, 2026-11-27); scanned, with
    # concurrent graphs, 15.4 ms (third run). XLA compiles it in 36-48 s there and 20 s on 2 CPU
    # cores (10 s scanned). The parameters are the scanned layout's, so checkpoints do not depend on it.
    c.model.scan_unroll = 17
    # default()'s CUDA graphs: concurrent and update-free. On one H200 (bf16, batch 128, 2026-11-28)
    # 12,838 images/s with its steps back to back, 13.5 ms a step waited for one by one (13.0 ms on
    # 2026-11-27, where serial graphs had run it in 13.8-14.9 ms). On one GPU,
    # --config.model.conv1x1_fusion=True ran it at 14,463 (BENCHMARKS.md, 2026-11-28).
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
