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
    # 10 units per while-loop iteration: on one H200 the batch-64 step ran 80.4 ms against 152.6 ms
    # with one (each iteration's condition is read back by the host), compiling in 30.0 s. On 2 CPU
    # cores it compiled in 26.7 s against 13.2 s and stepped 6% slower; with the hand-written BN
    # gradient it compiles in 18.4 s (BENCHMARKS.md, GPU section and "Launch counts").
    c.model.scan_unroll = 10
    c.batch_size = 64
    c.schedule = "epochs_step"
    c.lr_boundaries = (81, 122)
    c.num_train_steps = 200 * 50000 // 64  # 200 epochs
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2000
    return c
