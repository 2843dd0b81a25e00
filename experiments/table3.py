"""Table 3: original vs pre-activation units, on CIFAR-10 and CIFAR-100.

`--config=experiments/table3.py:UNIT,NET,DATASET` with UNIT original|full_preact, NET one of
110_1layer (the 1-layer-skip ResNet-110), 110, 164, 1001, DATASET cifar10|cifar100.
"""

from resnet_v2_jax import config as config_lib

PAPER = {  # error %, (original, pre-activation)
    ("110_1layer", "cifar10"): (9.90, 8.91),
    ("110", "cifar10"): (6.61, 6.37),
    ("164", "cifar10"): (5.93, 5.46),
    ("1001", "cifar10"): (7.61, 4.92),
    ("164", "cifar100"): (25.16, 24.33),
    ("1001", "cifar100"): (27.82, 22.71),
}
NETS = {"110_1layer": (110, "single", "A"), "110": (110, "basic", "A"), "164": (164, "bottleneck", "B"),
        "1001": (1001, "bottleneck", "B")}


def get_config(arg="full_preact,164,cifar10"):
    parts = arg.split(",")
    unit, net, dataset = (parts + ["164", "cifar10"])[:3] if len(parts) < 3 else parts
    if unit not in ("original", "full_preact") or (net, dataset) not in PAPER:
        raise ValueError(f"unknown Table 3 entry {arg!r}; choose original|full_preact,NET,DATASET with "
                         f"(NET, DATASET) from {sorted(PAPER)}")
    depth, block, shortcut_type = NETS[net]
    c = config_lib.default()
    c.experiment = f"table3_{unit}_{net}_{dataset}"
    c.paper_error = PAPER[(net, dataset)][unit == "full_preact"]
    c.dataset = dataset
    c.model.num_classes = 100 if dataset == "cifar100" else 10
    c.model.unit = unit
    c.model.depth, c.model.block, c.model.shortcut_type = depth, block, shortcut_type
    if depth == 1001:
        c.model.stride_on = "1x1"  # resnet-1k-layers, the paper's ResNet-1001 code (experiments/cifar1001.py)
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
