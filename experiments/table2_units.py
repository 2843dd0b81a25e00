"""Table 2 / Fig. 4: activation placements on ResNet-110 (basic) and ResNet-164 (bottleneck).

`--config=experiments/table2_units.py:UNIT,DEPTH`, e.g. `:full_preact,164` or `:original,110`.
"""

from resnet_v2_jax import config as config_lib

PAPER = {  # CIFAR-10 error (%), Table 2
    ("original", 110): 6.61, ("original", 164): 5.93,
    ("bn_after_add", 110): 8.17, ("bn_after_add", 164): 6.50,
    ("relu_before_add", 110): 7.84, ("relu_before_add", 164): 6.14,
    ("relu_only_preact", 110): 6.71, ("relu_only_preact", 164): 5.91,
    ("full_preact", 110): 6.37, ("full_preact", 164): 5.46,
}


def get_config(arg="full_preact,164"):
    unit, _, depth = arg.partition(",")
    depth = int(depth or 164)
    if (unit, depth) not in PAPER:
        raise ValueError(f"unknown Table 2 entry {arg!r}; choose UNIT,DEPTH from {sorted(PAPER)}")
    c = config_lib.default()
    c.experiment = f"table2_{unit}_{depth}"
    c.paper_error = PAPER[(unit, depth)]
    c.model.unit = unit
    c.model.depth = depth
    c.model.block = "basic" if depth == 110 else "bottleneck"
    c.model.shortcut_type = "A" if depth == 110 else "B"
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
