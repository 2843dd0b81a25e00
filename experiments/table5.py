"""Table 5: ImageNet, original against pre-activation units; single-crop validation error.

`--config=experiments/table5.py:UNIT,DEPTH,CROP[,AUGMENT]`, one of the rows of PAPER: UNIT original,
full_preact, or bn_after_add (Sec. 4.1's ResNet-101 comparison; Fig. 4(b)); DEPTH 101, 152 or 200;
CROP 224 (the centre crop of the 256-resized image) or 320 (the whole 320-resized image); AUGMENT
scale (the paper's scale augmentation, the default) or inception (random-sized crops with aspect
ratios: the 20.1/4.8 row). All are trained at 224 with config.imagenet's recipe. paper_error is the
top-1 error; PAPER holds the top-5 too. PAPER.md does not give the ResNet-101 rows' crop: 224 here.
"""

from resnet_v2_jax import config as config_lib

PAPER = {  # (unit, depth, crop, augment): (top-1, top-5) error %
    ("original", 152, 224, "scale"): (23.0, 6.7),
    ("original", 152, 320, "scale"): (21.3, 5.5),
    ("full_preact", 152, 320, "scale"): (21.1, 5.5),
    ("original", 200, 320, "scale"): (21.8, 6.0),
    ("full_preact", 200, 320, "scale"): (20.7, 5.3),
    ("full_preact", 200, 320, "inception"): (20.1, 4.8),
    ("original", 101, 224, "scale"): (23.6, 7.1),
    ("bn_after_add", 101, 224, "scale"): (24.6, 7.5),
}


def get_config(arg="original,200,320"):
    parts = arg.split(",")
    try:
        key = (parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else "scale")
    except (IndexError, ValueError):
        key = None
    if key not in PAPER:
        rows = "; ".join(",".join(map(str, k)) for k in PAPER)
        raise ValueError(f"unknown Table 5 row {arg!r}; choose UNIT,DEPTH,CROP[,AUGMENT] from: {rows}")
    unit, depth, crop, augment = key
    c = config_lib.imagenet(depth, PAPER[key][0], augment, crop)
    c.experiment = f"table5_{unit}_{depth}_{crop}" + ("" if augment == "scale" else f"_{augment}")
    c.model.unit = unit
    return c
