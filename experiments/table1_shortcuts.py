"""Table 1 / Fig. 2: shortcut variants on ResNet-110 (basic units, original unit, ReLU after add).

`--config=experiments/table1_shortcuts.py:VARIANT` with VARIANT one of the keys of VARIANTS.
Each entry sets the shortcut fields and the paper's CIFAR-10 error (%; -1 where the paper
reports "fail", i.e. above 20%).
"""

from resnet_v2_jax import config as config_lib

VARIANTS = {
    # name: (shortcut, extra model fields, paper error %)
    "identity": ("identity", {}, 6.61),
    "constant_scaling_plain": ("constant_scaling", {"shortcut_scale": 0.0}, -1.0),
    "constant_scaling": ("constant_scaling", {"shortcut_scale": 0.5}, -1.0),
    "constant_scaling_both": ("constant_scaling", {"shortcut_scale": 0.5, "scale_residual": True}, 12.35),
    "exclusive_gating_b0": ("exclusive_gating", {"gate_bias_init": 0.0}, -1.0),  # 0..-5 all fail
    "exclusive_gating": ("exclusive_gating", {"gate_bias_init": -6.0}, 8.70),
    "exclusive_gating_b7": ("exclusive_gating", {"gate_bias_init": -7.0}, 9.81),
    "shortcut_only_gating": ("shortcut_only_gating", {"gate_bias_init": -6.0}, 6.91),
    "shortcut_only_gating_b0": ("shortcut_only_gating", {"gate_bias_init": 0.0}, 12.86),
    "conv1x1": ("conv1x1", {}, 12.22),
    "dropout": ("dropout", {"shortcut_dropout": 0.5}, -1.0),
}


def get_config(variant="exclusive_gating"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown Table 1 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    shortcut, extra, paper = VARIANTS[variant]
    c = config_lib.default()
    c.experiment = f"table1_{variant}"
    c.paper_error = paper
    c.model.depth = 110
    c.model.block = "basic"
    c.model.unit = "original"
    c.model.shortcut_type = "A"
    c.model.shortcut = shortcut
    for k, v in extra.items():
        c.model[k] = v
    c.bn_group_size = c.batch_size // config_lib.PAPER_GPUS  # BN per GPU, as on the paper's two
    return c
