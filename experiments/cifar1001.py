"""ResNet-1001 (bottleneck), full pre-activation, CIFAR-10: the official code's batch-64 recipe.

Paper Table 4: 4.62% (median of 5; 4.69+-0.20), 10.2M parameters. resnet-1k-layers trains
200 epochs at batch 64 (lr 0.1, /10 at epochs 81 and 122 in fb.resnet.torch's schedule as used
there), Nesterov off, stride in the first 1x1 conv of a transition unit; BN statistics are over
the 64-image batch. Remat keeps the conv outputs so 1001 layers fit at batch 128 too.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "cifar1001"
    c.paper_error = 4.62
    c.model.depth = 1001
    c.model.block = "bottleneck"
    c.model.stride_on = "1x1"
    c.batch_size = 64
    c.schedule = "epochs_step"
    c.lr_boundaries = (81, 122)
    c.num_train_steps = 200 * 50000 // 64  # 200 epochs
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2000
    return c
