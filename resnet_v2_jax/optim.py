"""Learning-rate schedules and the SGD optimizer of the paper, built from optax pieces.

The official Torch code couples weight decay into the gradient (`g + wd * w`) before momentum,
on every parameter including BN's; `decay_bn_and_bias=False` masks the 1-D parameters out.
optax's `sgd` trace is Torch's momentum buffer (`v = m v + g`, update `-lr v`), Nesterov too.
"""

from __future__ import annotations

import jax
import optax

from resnet_v2_jax import config as config_lib


def peak_learning_rate(config) -> float:
    lr = config.learning_rate
    if config.lr_base_batch:
        lr = lr * config.batch_size / config.lr_base_batch
    return lr


def steps_per_epoch(config) -> float:
    return config_lib.DATASET_INFO[config.dataset]["num_train"] / config.batch_size


def schedule(config) -> optax.Schedule:
    """paper_steps: warm-up at `warmup_lr`, then /10 at step boundaries (32k, 48k of 64k);
    epochs_step: the same with boundaries in epochs (fb.resnet.torch); cosine; constant."""
    lr = peak_learning_rate(config)
    warm = config.warmup_steps
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            config.warmup_lr if warm else lr, lr, warm, max(config.num_train_steps, warm + 1))
    if config.schedule == "constant":
        boundaries = []
    elif config.schedule == "epochs_step":
        boundaries = [int(round(e * steps_per_epoch(config))) for e in config.lr_boundaries]
    else:
        boundaries = [int(b) for b in config.lr_boundaries]
    scales = {}
    if warm:
        scales[warm] = lr / config.warmup_lr
    for b in boundaries:
        scales[b] = scales.get(b, 1.0) * config.lr_decay
    return optax.piecewise_constant_schedule(config.warmup_lr if warm else lr, scales)


def decay_mask(params):
    """True for the parameters weight decay applies to: all, or only kernels (ndim > 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def optimizer(config) -> optax.GradientTransformation:
    decay = optax.add_decayed_weights(config.weight_decay, mask=None if config.decay_bn_and_bias else decay_mask)
    return optax.chain(
        decay,
        optax.sgd(schedule(config), momentum=config.momentum or None, nesterov=config.nesterov),
    )
