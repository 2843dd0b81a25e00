"""The model zoo: sizes against the paper, the scan folding, dtypes, initialisation and the network ends.

Big nets are only ever evaluated abstractly (`summary.analyse`, `jax.eval_shape`); numerics use a
CIFAR ResNet-20 at half width on 8x8 images, with random (numpy-drawn) params and BN statistics so
that no test pays for compiling `jax.random` initialisers except the one that checks them.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_fill
from jax.ad_checkpoint import print_saved_residuals

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks, summary
from resnet_v2_jax.layers import BatchNorm
from resnet_v2_jax.units import ResidualUnit

BATCH, SIZE = 4, 8


def make_config(family="cifar", depth=20, block="basic", **model):
    c = config_lib.default()
    c.dataset = "cifar10" if family == "cifar" else "imagenet2012"
    c.model.family, c.model.depth, c.model.block = family, depth, block
    c.model.num_classes = 10 if family == "cifar" else 1000
    for k, v in model.items():
        c.model[k] = v
    return c


def model_config(**kw):
    kw.setdefault("width", 0.5)
    return make_config(**kw).model


def abstract_variables(model, image=SIZE, batch=1):
    x = jax.ShapeDtypeStruct((batch, image, image, 3), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def random_variables(model, seed=0, image=SIZE):
    return random_fill(abstract_variables(model, image), seed)


def images(seed=1, batch=BATCH, size=SIZE):
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, 1.0, (batch, size, size, 3)), jnp.float32)


def apply_train(model, variables, x, **kw):
    return model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)


def leaves_with_paths(tree):
    return [("/".join(str(p.key) for p in path), a) for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]]


def close(a, b, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def tree_close(a, b, atol=1e-5, rtol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (pa, x), (_, y) in zip(leaves_with_paths(a), leaves_with_paths(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=pa)


# ---------------------------------------------------------------------------------------------
# Sizes: PAPER.md "Parameter counts" and "Forward multiply-adds".

ZOO = {
    # name: (family, depth, block, overrides, params, macs)
    "cifar-110": ("cifar", 110, "basic", {}, 1.73e6, 253e6),
    "cifar-164": ("cifar", 164, "bottleneck", {}, 1.70e6, 248e6),
    "cifar-1001": ("cifar", 1001, "bottleneck", {}, 10.33e6, 1.49e9),
    "cifar-1202": ("cifar", 1202, "basic", {"shortcut_type": "A"}, 19.4e6, None),
    "imagenet-50": ("imagenet", 50, "bottleneck", {}, 25.55e6, 4.09e9),
    "imagenet-152": ("imagenet", 152, "bottleneck", {}, 60.19e6, 11.5e9),
    "imagenet-200": ("imagenet", 200, "bottleneck", {}, 64.67e6, 15.0e9),
}


@pytest.fixture(scope="module")
def analysed():
    cache = {}

    def get(name):
        if name not in cache:
            family, depth, block, overrides, _, _ = ZOO[name]
            cache[name] = summary.analyse(make_config(family, depth, block, **overrides))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(ZOO))
def test_params_and_macs_match_the_paper(name, analysed):
    s = analysed(name)
    _, _, _, _, params, macs = ZOO[name]
    assert abs(s["params"] - params) / params < 0.005, (name, s["params"])
    if macs is not None:
        assert abs(s["macs"] - macs) / macs < 0.02, (name, s["macs"])


def test_resnet164_exact_count_and_1001_conv_plus_fc_count(analysed):
    assert analysed("cifar-164")["params"] == 1703258
    model = networks.build(make_config("cifar", 1001, "bottleneck").model)
    params = abstract_variables(model, 32)["params"]
    total = sum(a.size for _, a in leaves_with_paths(params))
    bn = sum(a.size for p, a in leaves_with_paths(params) if p.split("/")[-1] in ("scale", "bias")
             and p.split("/")[-2] != "fc")
    conv_fc = total - bn
    assert total == analysed("cifar-1001")["params"]
    assert abs(total - 10.33e6) / 10.33e6 < 0.005
    assert abs(conv_fc - 10.18e6) / 10.18e6 < 0.005
    assert abs(conv_fc - 10.2e6) / 10.2e6 < 0.005  # the paper's Table 4 figure counts conv + FC only


def _bottleneck_unit_params(c_in, f, project):
    """Full pre-activation bottleneck unit, counted by hand: BN(c_in) 1x1 BN 3x3 BN 1x1 (+ projection)."""
    return 2 * c_in + c_in * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + (c_in * 4 * f if project else 0)


def test_param_counts_by_hand():
    # CIFAR ResNet-164: 3x3 conv1 (3->16), stages of 18 units with widths 16/32/64, final BN, FC-10.
    total, c_in = 27 * 16, 16
    for f in (16, 32, 64):
        total += _bottleneck_unit_params(c_in, f, True) + 17 * _bottleneck_unit_params(4 * f, f, False)
        c_in = 4 * f
    total += 2 * 256 + 256 * 10 + 10
    assert summary.analyse(make_config("cifar", 164, "bottleneck"))["params"] == total
    # ImageNet ResNet-50: 7x7 conv1 (3->64), {3,4,6,3} units of widths 64..512, final BN, FC-1000.
    total, c_in = 49 * 3 * 64, 64
    for f, n in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        total += _bottleneck_unit_params(c_in, f, True) + (n - 1) * _bottleneck_unit_params(4 * f, f, False)
        c_in = 4 * f
    total += 2 * 2048 + 2048 * 1000 + 1000
    assert summary.analyse(make_config("imagenet", 50, "bottleneck"))["params"] == total


@pytest.mark.parametrize(
    "name,maps,channels",
    [
        ("cifar-110", (32, 16, 8), (16, 32, 64)),
        ("cifar-164", (32, 16, 8), (64, 128, 256)),
        ("cifar-1202", (32, 16, 8), (16, 32, 64)),
        ("imagenet-50", (56, 28, 14, 7), (256, 512, 1024, 2048)),
        ("imagenet-200", (56, 28, 14, 7), (256, 512, 1024, 2048)),
    ],
)
def test_stage_output_shapes(name, maps, channels, analysed):
    s = analysed(name)
    assert s["stages"] == {f"stage{i + 1}": [m, m, c] for i, (m, c) in enumerate(zip(maps, channels))}


@pytest.mark.parametrize("family,depth,block,size,classes",
                         [("cifar", 164, "bottleneck", 32, 10), ("cifar", 110, "basic", 32, 100),
                          ("imagenet", 50, "bottleneck", 224, 1000), ("imagenet", 18, "basic", 224, 1000)])
def test_logits_shape(family, depth, block, size, classes):
    cfg = make_config(family, depth, block, num_classes=classes).model
    model = networks.build(cfg)
    variables = abstract_variables(model, size)
    x = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.shape == (3, classes) and out.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# The scan folding.


@pytest.fixture(scope="module")
def net20():
    cfg = model_config()
    model = networks.build(cfg)
    return cfg, model, random_variables(model), images()


def test_scan_and_unrolled_have_the_same_param_layout(net20):
    cfg, model, _, _ = net20
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.scan = False
    a, b = abstract_variables(model), abstract_variables(networks.build(cfg2))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), a) == jax.tree.map(lambda s: (s.shape, s.dtype), b)
    # Identical units are stacked on a leading axis: 3 units per stage = unit1 + 2 stacked.
    assert a["params"]["stage3_units"]["unit"]["Conv_0"]["kernel"].shape == (2, 3, 3, 32, 32)
    assert a["batch_stats"]["stage3_units"]["unit"]["BatchNorm_0"]["mean"].shape == (2, 32)


def test_scan_equals_unrolled_in_train_and_eval(net20):
    cfg, model, variables, x = net20
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.scan = False
    unrolled = networks.build(cfg2)
    y1, s1 = apply_train(model, variables, x)
    y2, s2 = apply_train(unrolled, variables, x)
    close(y1, y2)
    tree_close(s1, s2)
    close(model.apply(variables, x, train=False), unrolled.apply(variables, x, train=False))


def test_scan_unroll_changes_no_number(net20):
    """k units per loop iteration (3 units per stage: 2 scanned, so k=2 unrolls fully, k=5 is capped)."""
    cfg, model, variables, x = net20
    y1, s1 = apply_train(model, variables, x)
    for k in (2, 5):
        cfg2 = cfg.copy_and_resolve_references()
        cfg2.scan_unroll = k
        net = networks.build(cfg2)
        y2, s2 = apply_train(net, variables, x)
        close(y1, y2)
        tree_close(s1, s2)
        jaxpr = jax.make_jaxpr(functools.partial(net.apply, train=False))(variables, x)
        assert [e.params["unroll"] for e in jaxpr.eqns if e.primitive.name == "scan"] == [2, 2, 2]


def test_scan_unroll_must_be_a_positive_integer():
    cfg = model_config()
    cfg.scan_unroll = 0
    with pytest.raises(ValueError, match=r"model.scan_unroll=0 must be an integer >= 1"):
        networks.build(cfg)


def _stage_io(model, variables, x, stage, train):
    """Input and output of the scanned units of stage `stage`, seen from outside the scan.

    The input is what `stage{k}_unit1` returns, the output what `stage{k+1}_unit1` receives.
    """
    rec = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            if context.module.name == f"stage{stage}_unit1":
                rec["in"] = out
            elif context.module.name == f"stage{stage + 1}_unit1":
                rec["out"] = args[0]
        return out

    with nn.intercept_methods(interceptor):
        if train:
            y, new = apply_train(model, variables, x)
        else:
            y, new = model.apply(variables, x, train=False), None
    return rec["in"], rec["out"], y, new


@pytest.mark.parametrize("train", [True, False])
def test_scanned_stage_equals_its_units_applied_one_by_one(net20, train):
    cfg, model, variables, x = net20
    stage = "stage2_units"
    x_in, x_out, _, new = _stage_io(model, variables, x, 2, train)
    assert x_in.shape == (BATCH, 4, 4, 16)
    params = variables["params"][stage]["unit"]
    stats = variables["batch_stats"][stage]["unit"]
    unit = ResidualUnit(16, block="basic", unit=cfg.unit, strides=1, transition=False,
                        shortcut_path="identity", train=train)
    h = x_in
    for i in range(2):
        take = functools.partial(jax.tree.map, lambda a, i=i: a[i])
        v = {"params": take(params), "batch_stats": take(stats)}
        if train:
            h, upd = unit.apply(v, h, mutable=["batch_stats"])
            tree_close(upd["batch_stats"], take(new["batch_stats"][stage]["unit"]))
        else:
            h = unit.apply(v, h)
    close(h, x_out)
    # Not trivially equal: the stage changes its input.
    assert np.abs(np.asarray(x_out - x_in)).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Precision.


def test_bfloat16_logits_close_to_float32_and_state_stays_float32(net20):
    cfg, model, variables, x = net20
    cfg16 = cfg.copy_and_resolve_references()
    cfg16.dtype = "bfloat16"
    model16 = networks.build(cfg16)
    shapes = abstract_variables(model16)
    assert all(a.dtype == jnp.float32 for _, a in leaves_with_paths(shapes))  # params and batch_stats
    dtypes = set()

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv):
            dtypes.add(out.dtype)
        return out

    with nn.intercept_methods(interceptor):
        y16, new16 = apply_train(model16, variables, x)
    assert dtypes == {jnp.dtype(jnp.bfloat16)}  # the convs really ran in bfloat16
    y32, _ = apply_train(model, variables, x)
    assert y16.dtype == jnp.float32
    assert float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max()) < 5e-2
    assert all(a.dtype == jnp.float32 for _, a in leaves_with_paths(new16))
    e16, e32 = model16.apply(variables, x, train=False), model.apply(variables, x, train=False)
    assert float(jnp.abs(e16 - e32).max() / jnp.abs(e32).max()) < 5e-2


# ---------------------------------------------------------------------------------------------
# Initialisation (the one test that runs the real initialisers).


@pytest.fixture(scope="module")
def initialised():
    cfg = make_config("cifar", 29, "bottleneck").model  # width 1: 256->64 and 64->256 1x1 convs
    model = networks.build(cfg)
    return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))


def _he_fan_out_std(kernel):
    k, c_out = kernel.shape[-4], kernel.shape[-1]
    return math.sqrt(2.0 / (k * k * c_out))


@pytest.mark.parametrize("conv", ["Conv_0", "Conv_1", "Conv_2"])
def test_conv_kernels_are_he_fan_out_normal(initialised, conv):
    kernel = np.asarray(initialised["params"]["stage3_units"]["unit"][conv]["kernel"])
    assert kernel.size >= 32768
    expected = _he_fan_out_std(kernel)
    assert abs(kernel.std() / expected - 1) < 0.05, (conv, kernel.shape, kernel.std(), expected)
    assert abs(kernel.mean()) < 0.05 * expected
    # Normal, not truncated: about 4.55% of a normal's mass lies beyond 2 sigma (0 when truncated at 2).
    assert 0.035 < (np.abs(kernel) > 2 * expected).mean() < 0.06


def _modules(params):
    """{module path: set of its param names}."""
    out = {}
    for path, _ in leaves_with_paths(params):
        module, name = path.rsplit("/", 1)
        out.setdefault(module, set()).add(name)
    return out


def _assert_no_conv_bias(params, allowed=("fc",)):
    for module, names in _modules(params).items():
        if names == {"scale", "bias"}:
            continue  # a BatchNorm
        if module.rsplit("/", 1)[-1] in allowed:
            assert names == {"kernel", "bias"}, module
        else:
            assert names == {"kernel"}, (module, names)  # a conv: kernel only


def test_no_conv_biases_and_bn_fc_initial_values(initialised):
    params, stats = initialised["params"], initialised["batch_stats"]
    _assert_no_conv_bias(params)
    n_bn = 0
    for module, names in _modules(params).items():
        if names == {"scale", "bias"}:
            n_bn += 1
            tree = params
            for k in module.split("/"):
                tree = tree[k]
            np.testing.assert_array_equal(np.asarray(tree["scale"]), 1.0, err_msg=module)
            np.testing.assert_array_equal(np.asarray(tree["bias"]), 0.0, err_msg=module)
    assert n_bn == 1 + 3 * 3 + 3 * 3  # final BN, 3 BNs in each unit1 and each stacked unit
    np.testing.assert_array_equal(np.asarray(params["fc"]["bias"]), 0.0)
    fc = np.asarray(params["fc"]["kernel"])
    assert fc.shape == (256, 10) and 0 < np.abs(fc).max() <= 1 / math.sqrt(256)  # Torch Linear default
    for path, a in leaves_with_paths(stats):
        np.testing.assert_array_equal(np.asarray(a), 0.0 if path.endswith("mean") else 1.0, err_msg=path)


@pytest.mark.parametrize("unit", ["full_preact", "original", "bn_after_add"])
@pytest.mark.parametrize("shortcut", ["identity", "exclusive_gating", "conv1x1"])
def test_no_conv_has_a_bias_except_the_gate(unit, shortcut):
    model = networks.build(model_config(unit=unit, shortcut=shortcut))
    _assert_no_conv_bias(abstract_variables(model)["params"], allowed=("fc", "gate"))


# ---------------------------------------------------------------------------------------------
# The network's ends.


@pytest.mark.parametrize("family,depth,block", [("cifar", 20, "basic"), ("imagenet", 50, "bottleneck")])
def test_final_bn_relu_and_conv1_bn_placement(family, depth, block):
    pre = abstract_variables(networks.build(model_config(family=family, depth=depth, block=block)))["params"]
    orig = abstract_variables(networks.build(model_config(family=family, depth=depth, block=block,
                                                          unit="original")))["params"]
    assert "final_bn0" in pre and not any(k.startswith("conv1_bn") for k in pre)
    assert "final_bn0" not in orig and not any(k.startswith("final_bn") for k in orig)
    assert "conv1_bn0" in orig
    top_level = {k for k in pre if not k.startswith("stage")}
    assert top_level == {"conv1", "final_bn0", "fc"}


def test_final_bn_relu_feeds_the_pooling_for_full_preact(net20):
    _, model, variables, x = net20
    feats = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.module.name == "fc":
            feats["fc_in"] = args[0]
        elif context.module.name == "final_bn0":
            out = next_fun(*args, **kwargs)
            feats["bn"] = out
            return out
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=False)
    # pooled relu(BN(x)): non-negative and equal to the mean of the rectified BN output.
    close(feats["fc_in"], jnp.maximum(feats["bn"], 0).mean((1, 2)))
    assert (np.asarray(feats["fc_in"]) >= 0).all()


@pytest.mark.parametrize("unit", ["full_preact", "original"])
def test_what_lies_between_conv1_and_the_first_unit(unit):
    """Full pre-activation: nothing (the first unit's BN-ReLU is "the activation after conv1");
    original: BN-ReLU."""
    model = networks.build(model_config(unit=unit, width=0.25))
    variables = random_variables(model)
    rec = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            if context.module.name == "conv1":
                rec["conv1"] = out
            elif context.module.name == "stage1_unit1":
                rec["unit_in"] = args[0]
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, images(), train=False)
    c = rec["conv1"]
    if unit == "full_preact":
        np.testing.assert_array_equal(np.asarray(rec["unit_in"]), np.asarray(c))
    else:
        bn, st = variables["params"]["conv1_bn0"], variables["batch_stats"]["conv1_bn0"]
        close(rec["unit_in"], jax.nn.relu((c - st["mean"]) / jnp.sqrt(st["var"] + 1e-5) * bn["scale"] + bn["bias"]))


# ---------------------------------------------------------------------------------------------
# BN statistics over groups (the paper's per-GPU batches).


def test_bn_group_size_equal_to_batch_is_the_default(net20):
    cfg, model, variables, x = net20
    y0, s0 = apply_train(model, variables, x)
    y4, s4 = apply_train(networks.build(cfg, bn_group_size=BATCH), variables, x)
    close(y4, y0, atol=1e-6, rtol=1e-6)
    tree_close(s4, s0, atol=1e-6, rtol=1e-6)


def test_bn_group_size_two_equals_two_separate_halves(net20):
    cfg, model, variables, x = net20
    y0, _ = apply_train(model, variables, x)
    y2, s2 = apply_train(networks.build(cfg, bn_group_size=2), variables, x)
    assert np.abs(np.asarray(y2 - y0)).max() > 1e-3
    (ya, sa), (yb, sb) = apply_train(model, variables, x[:2]), apply_train(model, variables, x[2:])
    close(y2, jnp.concatenate([ya, yb]))
    # The running statistics move by the average of the groups' statistics (linear update).
    tree_close(s2, jax.tree.map(lambda a, b: (a + b) / 2, sa, sb))


# ---------------------------------------------------------------------------------------------
# Rematerialisation.


def _loss_and_grads(model, variables, x):
    labels = jnp.arange(BATCH) % 10

    def loss(params):
        logits, _ = apply_train(model, {"params": params, "batch_stats": variables["batch_stats"]}, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.jit(jax.value_and_grad(loss))(variables["params"])


@pytest.fixture(scope="module")
def small_net():
    cfg = model_config(width=0.25)
    model = networks.build(cfg)
    variables, x = random_variables(model), images()
    return cfg, variables, x, _loss_and_grads(model, variables, x)


@pytest.mark.parametrize("policy", list(config_lib.REMAT_POLICIES))
def test_remat_gives_the_same_loss_and_gradients(small_net, policy):
    cfg, variables, x, (loss0, grads0) = small_net
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.remat, cfg2.remat_policy = True, policy
    loss, grads = _loss_and_grads(networks.build(cfg2), variables, x)
    close(loss, loss0)
    tree_close(grads, grads0, atol=1e-5, rtol=1e-4)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads0)) > 1e-3


def test_bn_recompute_mask_reaches_every_bn_relu_and_changes_no_number(small_net):
    """config.model.bn_recompute_mask puts a barrier on each BN-ReLU's saved tensors (so XLA cannot
    store the forward's ReLU mask for the backward); the loss and gradients stay the same."""
    cfg, variables, x, (loss0, grads0) = small_net
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.bn_recompute_mask, cfg2.bn_recompute_output = True, False
    model = networks.build(cfg2)
    loss, grads = _loss_and_grads(model, variables, x)
    close(loss, loss0)
    tree_close(grads, grads0, atol=1e-5, rtol=1e-4)

    def barriers(m):  # in the gradient's program: the barrier is in BN's forward rule for autodiff
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: apply_train(
            m, {"params": p, "batch_stats": variables["batch_stats"]}, x)[0].sum()))(variables["params"])
        return str(jaxpr).count("optimization_barrier")

    # ResNet-20, full pre-activation: the final BN-ReLU and two per traced unit body (each stage's
    # first unit and its scanned rest, traced once): 1 + 2 x (3 + 3) barriers. With
    # bn_recompute_output (the default) a BN-ReLU fused with its conv recomputes its mask anyway:
    # left are the final one and the pre-activations of stages 2 and 3, which feed the shortcut too.
    cfg3 = cfg2.copy_and_resolve_references()
    cfg3.bn_recompute_output = True
    assert barriers(networks.build(cfg)) == 0 and barriers(model) == 13
    assert barriers(networks.build(cfg3)) == 3


def test_bn_partial_sums_reaches_every_bn_with_long_sums_and_changes_no_number():
    """config.model.bn_partial_sums splits the forward sums of each BN with more than 4096 rows
    (ResNet-8 at 32x32, batch 8: stage 1's 8,192) into 32 partials; the outputs stay the same."""
    cfg = model_config(depth=8, width=0.25)
    model = networks.build(cfg)
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.bn_partial_sums = True
    split = networks.build(cfg2)
    variables, x = random_variables(model, image=32), images(batch=8, size=32)

    def partials(m):
        return str(jax.make_jaxpr(lambda v: apply_train(m, v, x))(variables)).count("f32[1,32,4]")

    long_sums = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
            long_sums.append(math.prod(args[0].shape[:-1]) > 4096)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        apply_train(split, variables, x)
    assert sum(long_sums) == 3 and len(long_sums) == 7  # stage 1's three BNs, of seven
    assert partials(model) == 0 and partials(split) == 3 * 2  # each: sum and sum of squares
    (y0, s0), (y1, s1) = apply_train(model, variables, x), apply_train(split, variables, x)
    close(y1, y0, atol=1e-4, rtol=1e-4)
    tree_close(s1, s0, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Stride placement and shortcut types.


def _conv_calls(model, image=SIZE):
    calls = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if isinstance(m, nn.Conv) and context.method_name == "__call__":
            calls[tuple(m.scope.path)] = (tuple(m.kernel_size), m.strides, args[0].shape[1:3], out.shape[1:3])
        return out

    with nn.intercept_methods(interceptor):
        abstract_variables(model, image)
    return calls


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
def test_stride_placement_in_bottleneck_transition(stride_on):
    calls = _conv_calls(networks.build(model_config(depth=29, block="bottleneck", stride_on=stride_on)))
    c0, c1, c2 = (calls[("stage2_unit1", f"Conv_{i}")] for i in range(3))
    strided, plain = (c0, c1) if stride_on == "1x1" else (c1, c0)
    assert strided[1] in (2, (2, 2)) and strided[3] == (4, 4) and strided[2] == (8, 8)
    assert plain[1] in (1, (1, 1), None)
    assert c0[0] == (1, 1) and c1[0] == (3, 3) and c2[0] == (1, 1)
    assert c2[2] == c2[3] == (4, 4)
    assert calls[("stage2_unit1", "projection")][1] in (2, (2, 2))
    # Non-transition units never stride.
    assert all(c[2] == c[3] for p, c in calls.items() if p[0] != "stage2_unit1" and p[0] != "stage3_unit1")


def _projection_kernels(params):
    return {p: a for p, a in leaves_with_paths(params) if "/projection/" in p}


def test_shortcut_type_a_has_no_projection_and_b_differs_by_exactly_the_projections():
    pa = abstract_variables(networks.build(model_config(width=1.0, shortcut_type="A")))["params"]
    pb = abstract_variables(networks.build(model_config(width=1.0, shortcut_type="B")))["params"]
    assert not _projection_kernels(pa) and not any("projection" in p for p, _ in leaves_with_paths(pa))
    proj = _projection_kernels(pb)
    assert set(proj) == {"stage2_unit1/projection/kernel", "stage3_unit1/projection/kernel"}
    def count(tree):
        return sum(a.size for _, a in leaves_with_paths(tree))

    assert count(pb) - count(pa) == sum(a.size for a in proj.values()) == 16 * 32 + 32 * 64


def test_shortcut_type_a_zero_pads_the_subsampled_preactivation():
    x = jnp.asarray(np.random.default_rng(3).normal(0.0, 1.0, (BATCH, SIZE, SIZE, 8)), jnp.float32)
    kw = {"block": "basic", "unit": "full_preact", "strides": 2, "transition": True, "shortcut_path": "zero_pad"}
    u = ResidualUnit(16, **kw)
    v = random_fill(jax.eval_shape(u.init, jax.random.PRNGKey(0), x))
    assert "projection" not in v["params"]
    y, _ = u.apply(v, x, mutable=["batch_stats"])
    f, _ = ResidualUnit(16, shortcut="constant_scaling", shortcut_scale=0.0, **kw).apply(
        v, x, mutable=["batch_stats"])
    bn = v["params"]["BatchNorm_0"]
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    pre = jax.nn.relu((x - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"])
    h = jnp.pad(pre[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (0, 8)])
    assert y.shape == (BATCH, 4, 4, 16)
    close(y - f, h)
    np.testing.assert_array_equal(np.asarray(y - f)[..., 8:], 0.0)


@pytest.mark.parametrize("family,depth,block,stage_sizes", [
    ("cifar", 29, "bottleneck", (3, 3, 3)),
    ("imagenet", 50, "bottleneck", (3, 4, 6, 3)),
])
def test_shortcut_types_b_and_c_count_projections(family, depth, block, stage_sizes):
    pb = abstract_variables(networks.build(model_config(family=family, depth=depth, block=block)),
                            image=32)["params"]
    pc = abstract_variables(networks.build(model_config(family=family, depth=depth, block=block,
                                                        shortcut_type="C")), image=32)["params"]

    def n_projections(params):
        return sum(a.shape[0] if a.ndim == 5 else 1 for a in _projection_kernels(params).values())

    # B: one projection per stage (its first unit; CIFAR stage 1 too, 16 -> 64 channels).
    assert n_projections(pb) == len(stage_sizes)
    assert all(p.split("/")[0].endswith("_unit1") for p in _projection_kernels(pb))
    # C: every unit.
    assert n_projections(pc) == sum(stage_sizes)


def test_stem_space_to_depth_changes_no_number_and_blocks_the_input():
    """config.model.stem_space_to_depth (the default) computes the ImageNet stem's 7x7 stride-2 convolution as a
    4x4 stride-1 one on 2x2 blocks of the image (12 channels), with the same parameters: loss and
    gradients stay the same (float32 rounding), and the traced program holds the blocked conv."""
    cfg = model_config(family="imagenet", depth=18, width=0.25, stem_space_to_depth=False)
    model = networks.build(cfg)
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.stem_space_to_depth = True  # the default since 2026-11-27 (third GPU run)
    blocked = networks.build(cfg2)
    # 64x64: at 32x32 the last stage's BN would be over 4 values, which turns float rounding into 1e-4
    variables, x = random_variables(model, image=64), images(size=64)
    assert jax.tree.structure(abstract_variables(blocked, 64)) == jax.tree.structure(variables)
    loss0, grads0 = _loss_and_grads(model, variables, x)
    loss, grads = _loss_and_grads(blocked, variables, x)
    close(loss, loss0)
    tree_close(grads, grads0, atol=1e-5, rtol=1e-4)
    assert float(jnp.abs(grads0["conv1"]["kernel"]).max()) > 1e-3

    def stem(m):
        jaxpr = str(jax.make_jaxpr(lambda v: apply_train(m, v, x))(variables))
        return "f32[4,33,33,12]" in jaxpr, "f32[4,4,12,16]" in jaxpr  # blocked (shifted) input, kernel

    assert stem(model) == (False, False) and stem(blocked) == (True, True)


def test_stem_align_channels_feeds_16_channels_and_changes_no_parameter():
    """config.model.stem_align_channels: in bfloat16 the blocked stem reads 16 channels (12 and 4 zero
    ones), with the same parameters and, to bfloat16 rounding, the same loss; it needs the blocked stem."""
    cfg = model_config(family="imagenet", depth=18, width=0.25, dtype="bfloat16")
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.stem_align_channels = True
    model, aligned = networks.build(cfg), networks.build(cfg2)
    variables, x = random_variables(model, image=64), images(size=64)
    assert jax.tree.structure(abstract_variables(aligned, 64)) == jax.tree.structure(variables)
    (loss0, _), (loss, _) = (jax.jit(lambda v, m=m: _loss_and_grads(m, v, x))(variables) for m in (model, aligned))
    close(loss, loss0, atol=2e-2, rtol=2e-2)
    jaxpr = str(jax.make_jaxpr(lambda v: apply_train(aligned, v, x))(variables))
    assert "bf16[4,33,33,16]" in jaxpr and "bf16[4,4,16,16]" in jaxpr
    c = make_config()
    c.model.stem_align_channels, c.model.stem_space_to_depth = True, False
    with pytest.raises(ValueError, match="stem_align_channels=True needs model.stem_space_to_depth=True"):
        config_lib.validate(c)


@pytest.mark.parametrize("kw", [dict(depth=20, block="bottleneck"), dict(depth=14, unit="original")])
def test_bn_recompute_output_keeps_no_bn_relu_output_and_changes_no_number(kw, capsys):
    """config.model.bn_recompute_output (the default): a BN-ReLU that feeds only the next conv runs
    with it as one op, whose backward recomputes the conv's input from BN's saved input. Same
    parameters from the same keys, the same loss and gradients (float32, exactly here), and the
    BN-ReLU outputs are no longer among the saved tensors."""
    cfg = model_config(width=0.25, bn_recompute_output=False, **kw)
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.bn_recompute_output = True
    model, fused = networks.build(cfg), networks.build(cfg2)
    init = [jax.jit(functools.partial(m.init, train=False))(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
            for m in (model, fused)]
    assert jax.tree.structure(init[0]) == jax.tree.structure(init[1])
    assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(init[0]), jax.tree.leaves(init[1])))
    variables, x = random_variables(model, image=16), images(size=16)
    loss0, grads0 = _loss_and_grads(model, variables, x)
    loss, grads = _loss_and_grads(fused, variables, x)
    close(loss, loss0, atol=0, rtol=0)
    tree_close(grads, grads0, atol=1e-6, rtol=1e-6)

    def full_size_saved(m):  # activations (spatial maps) among the residuals, not parameters
        print_saved_residuals(lambda p: apply_train(
            m, {"params": p, "batch_stats": variables["batch_stats"]}, x)[0].sum(), variables["params"])
        res = capsys.readouterr().out.splitlines()
        return [r for r in res if "from the argument" not in r and any(f"{s},{s}," in r for s in (16, 8, 4))]

    fewer = len(full_size_saved(model)) - len(full_size_saved(fused))
    # Per traced unit body (a stage's first unit; its scanned rest, whose residuals are stacked): a
    # bottleneck unit has 3 BN-ReLU -> conv, 2 in a first unit (its pre-activation feeds the
    # shortcut too): 3 x (2 + 3) for ResNet-20; 'original' units have 1: 3 x (1 + 1) for ResNet-14.
    assert fewer == (15 if kw.get("block") == "bottleneck" else 6), fewer
