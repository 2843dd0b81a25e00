"""Every Fig. 4 unit checked on values against the paper's op string, every Fig. 2 shortcut as its formula.

The reference below is written from PAPER.md's tables ("W BN ReLU W BN, add, ReLU", ...), not from
`units.ORDERS`: it walks a token string, consuming the unit's convs and BNs in creation order, so a
unit whose ops are in the wrong place, or whose shortcut is taken from the wrong tensor, disagrees.
Everything runs op by op on tiny tensors (batch 4, 8x8 maps, 8 channels).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_fill

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import units
from resnet_v2_jax.units import ResidualUnit

C = 8  # channels of the test tensors
EPS = 1e-5

# Fig. 4 / Table 2 of the paper, 2-layer (basic) form: W = conv, B = BN, R = ReLU, + = addition.
FIG4 = {
    "original": "WBRWB+R",
    "bn_after_add": "WBRW+BR",
    "relu_before_add": "WBRWBR+",
    "relu_only_preact": "RWBRWB+",
    "full_preact": "BRWBRW+",
}


def bottleneck_tokens(tokens: str) -> str:
    """The 3-layer form of a Fig. 4 string: the ops between the two convs repeat once more."""
    first, second = tokens.index("W"), tokens.index("W", tokens.index("W") + 1)
    mid = tokens[first + 1 : second]
    return tokens[: second] + "W" + mid + tokens[second:]


def ref_conv(x, kernel, stride=1):
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def ref_bn(x, params, stats=None):
    """Train mode (stats None): batch statistics, two-pass variance; eval mode: running statistics."""
    if stats is None:
        mean = x.mean((0, 1, 2))
        var = ((x - mean) ** 2).mean((0, 1, 2))
    else:
        mean, var = stats["mean"], stats["var"]
    return (x - mean) / jnp.sqrt(var + EPS) * params["scale"] + params["bias"]


def reference_unit(tokens, variables, x, shortcut=lambda x: x, train=True):
    """(y, F) of an identity-shortcut unit described by a token string."""
    params = variables["params"]
    convs = iter(sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:])))
    bns = iter(sorted((k for k in params if k.startswith("BatchNorm_")), key=lambda k: int(k[10:])))
    h, f = x, None
    for t in tokens:
        if t == "W":
            h = ref_conv(h, params[next(convs)]["kernel"])
        elif t == "B":
            name = next(bns)
            h = ref_bn(h, params[name], None if train else variables["batch_stats"][name])
        elif t == "R":
            h = jax.nn.relu(h)
        else:
            f = h
            h = shortcut(x) + h
    assert next(convs, None) is None and next(bns, None) is None, "unit has ops the paper's unit lacks"
    return h, f


def random_variables(module, x, seed=0, **init_kwargs):
    """Random params and BN statistics of `module`'s shapes (`helpers.random_fill`)."""
    return random_fill(jax.eval_shape(functools.partial(module.init, **init_kwargs), jax.random.PRNGKey(0), x), seed)


def make_x(seed=1, shape=(4, 8, 8, C)):
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, 1.0, shape), jnp.float32)


def run(unit, variables, x, train=True, rng=None):
    if not train:
        return unit.apply(variables, x)
    kw = {"rngs": {"dropout": rng}} if rng is not None else {}
    y, _ = unit.apply(variables, x, mutable=["batch_stats"], **kw)
    return y


def capture(names, fn):
    """Calls fn() and records (input, output) of the submodules called `names`."""
    rec = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in names:
            rec[context.module.name] = (args[0], out)
        return out

    with nn.intercept_methods(interceptor):
        result = fn()
    return result, rec


def close(a, b, atol=2e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def identity_unit(unit="full_preact", block="basic", **kw):
    """A non-transition unit mapping C channels to C (a bottleneck's width is C / 4)."""
    return ResidualUnit(C // 4 if block == "bottleneck" else C, block=block, unit=unit, **kw)


def branch(unit_name, variables, x, train=True, block="basic", **kw):
    """F(x) through the package itself: the same branch params with the shortcut scaled by 0."""
    u = identity_unit(unit_name, block, shortcut="constant_scaling", shortcut_scale=0.0, train=train, **kw)
    return run(u, variables, x, train)


# ---------------------------------------------------------------------------------------------
# Fig. 4: the five activation placements, on values.


def test_fig4_strings_cover_every_configured_unit():
    assert set(FIG4) == set(config_lib.UNITS) == set(units.ORDERS)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_each_unit_matches_its_own_fig4_order_and_no_other(block):
    x = make_x()
    for name in FIG4:
        u = identity_unit(name, block)
        variables = random_variables(u, x)
        y = run(u, variables, x)
        for other, tokens in FIG4.items():
            tokens = bottleneck_tokens(tokens) if block == "bottleneck" else tokens
            if other == name:
                close(y, reference_unit(tokens, variables, x)[0])
                continue
            try:
                ref = reference_unit(tokens, variables, x)[0]
            except (TypeError, ValueError):  # BN widths of another order do not fit: no match
                continue
            assert np.abs(np.asarray(y - ref)).max() > 1e-2, f"{name} unit also matches {other}"


@pytest.mark.parametrize("name", list(FIG4))
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_unit_gradients_match_the_reference(block, name):
    """The backward pass of every unit: layers.scan_friendly_conv's custom VJP (CPU) and BatchNorm's
    hand-written one (BN alone and fused with ReLU) against autodiff of the reference ops."""
    x = make_x()
    u = identity_unit(name, block)
    variables = random_variables(u, x)
    tokens = FIG4[name] if block == "basic" else bottleneck_tokens(FIG4[name])
    w = make_x(seed=9)

    def package(params, x):
        return jnp.sum(w * run(u, {"params": params, "batch_stats": variables["batch_stats"]}, x))

    def reference(params, x):
        return jnp.sum(w * reference_unit(tokens, {"params": params, "batch_stats": {}}, x)[0])

    got = jax.grad(package, (0, 1))(variables["params"], x)
    want = jax.grad(reference, (0, 1))(variables["params"], x)
    for (path, g), (_, r) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                 jax.tree_util.tree_flatten_with_path(want)[0]):
        scale = float(jnp.abs(r).max())
        assert scale > 1e-3, path
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4 * scale, rtol=1e-4, err_msg=str(path))


@pytest.mark.parametrize("name", list(FIG4))
def test_each_unit_in_eval_mode_uses_running_statistics(name):
    x = make_x()
    u = identity_unit(name, train=False)
    variables = random_variables(u, x, seed=5)
    close(run(u, variables, x, train=False), reference_unit(FIG4[name], variables, x, train=False)[0])


def test_relu_before_add_makes_the_residual_non_negative():
    x = make_x()
    u = identity_unit("relu_before_add")
    y = run(u, random_variables(u, x), x)
    r = np.asarray(y - x)
    assert (r >= 0).all()
    assert 0.1 < (r == 0).mean() < 0.9  # the ReLU really clips, the branch is not all zero
    # So the unit can only increase its input: x_L >= x_l, the paper's objection to (c).
    assert (np.asarray(y) >= np.asarray(x)).all()


def test_original_ends_with_relu_after_the_addition():
    x = make_x()
    u = identity_unit("original")
    variables = random_variables(u, x)
    y, rec = capture({"BatchNorm_1"}, lambda: run(u, variables, x))
    f = rec["BatchNorm_1"][1]  # the branch's last op is its second BN
    y, f = np.asarray(y), np.asarray(f)
    assert (y >= 0).all()
    np.testing.assert_array_equal(y, np.maximum(np.asarray(x) + f, 0.0))
    negative = np.asarray(x) + f < 0
    assert negative.mean() > 0.1 and (y[negative] == 0).all()
    # The branch itself is not rectified (BN last): it has negative entries that survive the sum.
    assert (f < 0).mean() > 0.1


def test_bn_after_add_normalises_the_sum_then_rectifies():
    x = make_x()
    u = identity_unit("bn_after_add")
    variables = random_variables(u, x)
    y, rec = capture({"Conv_1", "BatchNorm_1"}, lambda: run(u, variables, x))
    f = rec["Conv_1"][1]  # the branch ends with its second conv, no BN
    z_in, out = rec["BatchNorm_1"]  # BN then ReLU is one op (BatchNorm(relu=True)): `out` is rectified
    np.testing.assert_array_equal(np.asarray(z_in), np.asarray(x + f))  # the BN reads the sum
    np.testing.assert_array_equal(np.asarray(y), np.asarray(out))  # and nothing follows it
    # y = ReLU(BN(sum)) with batch statistics, against the reference BN.
    z = np.asarray(ref_bn(z_in, variables["params"]["BatchNorm_1"]))
    close(y, np.maximum(z, 0.0), atol=1e-5)
    assert 0.2 < (np.asarray(y) == 0).mean() < 0.8


def test_full_preact_unit_with_zero_last_conv_is_exactly_the_identity_forward_and_backward():
    """Paper Eq. 4/5 with F = 0: x_L = x_l and dE/dx_l = dE/dx_L, through several stacked units."""
    x = make_x()
    u = identity_unit("full_preact", zero_init_last=True)
    stack = []
    for seed in range(3):
        v = u.init(jax.random.PRNGKey(seed), x)  # the package's own zero-init-last, not ours
        assert not np.asarray(v["params"]["Conv_1"]["kernel"]).any()
        assert np.asarray(v["params"]["Conv_0"]["kernel"]).std() > 0.05
        # Non-trivial BNs, so only the zero conv can make F vanish.
        v = dict(v, params=dict(v["params"], **{
            k: random_variables(u, x, seed=seed)["params"][k] for k in ("BatchNorm_0", "BatchNorm_1")}))
        stack.append(v)

    def forward(x):
        for v in stack:
            x = run(u, v, x)
        return x

    y, vjp = jax.vjp(forward, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    w = make_x(seed=7)
    (dx,) = vjp(w)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(w))


def test_full_preact_scanned_stage_with_zero_last_convs_passes_the_signal_unchanged():
    """The same on a CIFAR full_preact net's scanned stage (stacked params, as `nn.scan` folds them)."""
    from resnet_v2_jax import networks

    cfg = config_lib.default().model
    cfg.depth, cfg.block, cfg.width, cfg.zero_init_last = 20, "basic", 0.5, True
    model = networks.build(cfg)
    x = make_x(shape=(4, 8, 8, 3))
    variables = random_variables(model, x, train=False)
    stacked = variables["params"]["stage2_units"]["unit"]
    stacked = dict(stacked, Conv_1={"kernel": jnp.zeros_like(stacked["Conv_1"]["kernel"])})
    variables = dict(variables, params=dict(variables["params"], stage2_units={"unit": stacked}))
    rec = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in ("stage2_unit1", "stage3_unit1"):
            rec[context.module.name] = (args[0], out)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    x_l, x_L = rec["stage2_unit1"][1], rec["stage3_unit1"][0]  # the scanned units' input and output
    assert np.abs(np.asarray(x_l)).max() > 0.1
    np.testing.assert_array_equal(np.asarray(x_L), np.asarray(x_l))

    # Backward through the same scanned stage: d(sum(w * x_L)) / d x_l == w exactly.
    stage = nn.scan(networks._ScanBody, variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True}, length=2)(
        ResidualUnit, {"features": 16, "block": "basic", "unit": "full_preact"})
    stage_vars = {"params": {"unit": stacked}, "batch_stats": variables["batch_stats"]["stage2_units"]}

    def forward(h):
        (out, _), _ = stage.apply(stage_vars, h, None, mutable=["batch_stats"])
        return out

    y, vjp = jax.vjp(forward, x_l)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x_l))
    w = make_x(seed=7, shape=x_l.shape)
    np.testing.assert_array_equal(np.asarray(vjp(w)[0]), np.asarray(w))


def test_full_preact_general_unit_adds_the_branch_to_the_untouched_input():
    """x_{l+1} = x_l + F(x_l): the shortcut carries the raw x, not the pre-activated one."""
    x = make_x()
    u = identity_unit("full_preact")
    variables = random_variables(u, x)
    y = run(u, variables, x)
    close(y - x, branch("full_preact", variables, x))
    # Jacobian is identity + dF/dx: J^T w - w equals the branch's vjp.
    w = make_x(seed=7)
    (dx,) = jax.vjp(lambda x: run(u, variables, x), x)[1](w)
    (df,) = jax.vjp(lambda x: branch("full_preact", variables, x), x)[1](w)
    close(dx - w, df, atol=1e-4)


def test_relu_only_preact_branch_sees_only_relu_of_x():
    x = make_x()
    u = identity_unit("relu_only_preact")
    variables = random_variables(u, x)
    x2 = jnp.where(x < 0, x * 3.0 - 1.0, x)  # other negatives, same positives
    np.testing.assert_array_equal(
        np.asarray(branch("relu_only_preact", variables, x)), np.asarray(branch("relu_only_preact", variables, x2))
    )
    close(run(u, variables, x) - x, run(u, variables, x2) - x2)
    # The check can fail: changing positives changes F, and full_preact's F sees the negatives (BN first).
    x3 = jnp.where(x > 0, x * x, x)  # (a uniform rescale of the positives would be undone by the BN)
    f, f3 = branch("relu_only_preact", variables, x), branch("relu_only_preact", variables, x3)
    assert np.abs(np.asarray(f3 - f)).max() > 1e-2
    assert np.abs(np.asarray(branch("full_preact", variables, x2) - branch("full_preact", variables, x))).max() > 1e-2


def test_full_preact_branch_is_invariant_to_a_per_channel_affine_input_in_train_mode():
    x = make_x()
    u = identity_unit("full_preact")
    variables = random_variables(u, x)
    rng = np.random.default_rng(11)
    a = jnp.asarray(rng.uniform(0.5, 2.0, C), jnp.float32)
    b = jnp.asarray(rng.normal(0.0, 1.0, C), jnp.float32)
    f = branch("full_preact", variables, x)
    close(branch("full_preact", variables, a * x + b), f, atol=1e-4, rtol=1e-4)
    close(run(u, variables, a * x + b) - (a * x + b), f, atol=1e-4, rtol=1e-4)
    # A unit whose first op is not BN is not invariant.
    assert np.abs(np.asarray(branch("relu_only_preact", variables, a * x + b)
                             - branch("relu_only_preact", variables, x))).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Transition (dimension-increasing) units: both paths read the one pre-activated tensor.


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
def test_full_preact_transition_projects_the_preactivated_tensor(stride_on):
    x = make_x(shape=(4, 8, 8, 4))
    u = ResidualUnit(C, block="bottleneck", unit="full_preact", strides=2, transition=True,
                     shortcut_path="project", stride_on=stride_on)
    variables = random_variables(u, x)
    y = run(u, variables, x)
    p = variables["params"]
    assert set(p) == {"BatchNorm_0", "BatchNorm_1", "BatchNorm_2", "Conv_0", "Conv_1", "Conv_2", "projection"}
    pre = jax.nn.relu(ref_bn(x, p["BatchNorm_0"]))  # shared by both paths
    s1, s3 = (2, 1) if stride_on == "1x1" else (1, 2)
    f = ref_conv(pre, p["Conv_0"]["kernel"], s1)
    f = ref_conv(jax.nn.relu(ref_bn(f, p["BatchNorm_1"])), p["Conv_1"]["kernel"], s3)
    f = ref_conv(jax.nn.relu(ref_bn(f, p["BatchNorm_2"])), p["Conv_2"]["kernel"])
    h = ref_conv(pre, p["projection"]["kernel"], 2)
    assert y.shape == (4, 4, 4, 4 * C)
    close(y, h + f)
    # Projecting the raw x (a frequent port bug) gives something else.
    assert np.abs(np.asarray(y - (ref_conv(x, p["projection"]["kernel"], 2) + f))).max() > 1e-2


def test_original_transition_projection_has_bn_and_relu_after_the_sum():
    x = make_x(shape=(4, 8, 8, 4))
    u = ResidualUnit(C, block="basic", unit="original", strides=2, transition=True, shortcut_path="project")
    variables = random_variables(u, x)
    p = variables["params"]
    f = ref_conv(x, p["Conv_0"]["kernel"], 2)
    f = ref_bn(ref_conv(jax.nn.relu(ref_bn(f, p["BatchNorm_0"])), p["Conv_1"]["kernel"]), p["BatchNorm_1"])
    h = ref_bn(ref_conv(x, p["projection"]["kernel"], 2), p["projection_bn"])
    close(run(u, variables, x), jax.nn.relu(h + f))


# ---------------------------------------------------------------------------------------------
# Fig. 2: shortcuts, as formulas. F comes from the reference (independent of the package).


def _full_preact_case(seed=0):
    x = make_x()
    u = identity_unit("full_preact")
    variables = random_variables(u, x, seed=seed)
    _, f = reference_unit(FIG4["full_preact"], variables, x)
    return x, variables, f


def test_constant_scaling_zero_is_a_plain_net():
    x, variables, f = _full_preact_case()
    u = identity_unit(shortcut="constant_scaling", shortcut_scale=0.0)
    y = run(u, variables, x)
    close(y, f)
    # Changing x's contribution alone (same F) does not change y: y - F == 0.
    close(y - f, np.zeros(y.shape), atol=2e-5)


def test_constant_scaling_half():
    x, variables, f = _full_preact_case()
    u = identity_unit(shortcut="constant_scaling", shortcut_scale=0.5)
    close(run(u, variables, x), 0.5 * x + f)


def test_constant_scaling_both_paths():
    x, variables, f = _full_preact_case()
    u = identity_unit(shortcut="constant_scaling", shortcut_scale=0.5, scale_residual=True)
    close(run(u, variables, x), 0.5 * x + 0.5 * f)


def test_constant_scaling_in_an_original_unit_keeps_the_relu_after_the_sum():
    x = make_x()
    u = identity_unit("original", shortcut="constant_scaling", shortcut_scale=0.5)
    variables = random_variables(u, x)
    _, f = reference_unit(FIG4["original"], variables, x)
    close(run(u, variables, x), jax.nn.relu(0.5 * x + f))


@pytest.fixture(scope="module")
def gated():
    """The package's own init of a gated unit with b_g = -100, and the branch-only params."""
    x = make_x()
    u = identity_unit(shortcut="exclusive_gating", gate_bias_init=-100.0)
    v = u.init(jax.random.PRNGKey(0), x)
    gate = v["params"]["gate"]
    np.testing.assert_array_equal(np.asarray(gate["bias"]), np.full((C,), -100.0, np.float32))
    assert gate["kernel"].shape == (1, 1, C, C)  # as many gate channels as x: element-wise gating
    branch_vars = {"params": {k: w for k, w in v["params"].items() if k != "gate"},
                   "batch_stats": v["batch_stats"]}
    _, f = reference_unit(FIG4["full_preact"], branch_vars, x)
    return x, v, branch_vars, f


def _with_gate_bias(v, b):
    gate = dict(v["params"]["gate"], bias=jnp.full((C,), b, jnp.float32))
    return dict(v, params=dict(v["params"], gate=gate))


def test_exclusive_gating_closed_gate_is_the_identity(gated):
    x, v, _, f = gated
    assert np.abs(np.asarray(f)).max() > 0.1
    y = run(identity_unit(shortcut="exclusive_gating", gate_bias_init=-100.0), v, x)
    close(y, x, atol=1e-6, rtol=0)


def test_exclusive_gating_open_gate_is_the_plain_branch(gated):
    x, v, _, f = gated
    y = run(identity_unit(shortcut="exclusive_gating", gate_bias_init=100.0), _with_gate_bias(v, 100.0), x)
    close(y, f, atol=1e-5)


def test_exclusive_gating_formula_at_moderate_bias(gated):
    x, v, _, f = gated
    v = _with_gate_bias(v, -1.0)
    g = jax.nn.sigmoid(ref_conv(x, v["params"]["gate"]["kernel"]) - 1.0)
    close(run(identity_unit(shortcut="exclusive_gating"), v, x), (1 - g) * x + g * f)
    close(run(identity_unit(shortcut="shortcut_only_gating"), v, x), (1 - g) * x + f)


def test_shortcut_only_gating_closed_gate_is_an_identity_shortcut_unit(gated):
    x, v, branch_vars, f = gated
    y = run(identity_unit(shortcut="shortcut_only_gating"), v, x)
    close(y, run(identity_unit(), branch_vars, x), atol=1e-6)
    close(y, x + f)


def test_shortcut_only_gating_open_gate_is_the_branch(gated):
    x, v, _, f = gated
    y = run(identity_unit(shortcut="shortcut_only_gating"), _with_gate_bias(v, 100.0), x)
    close(y, f, atol=1e-5)


def test_conv1x1_shortcut_projects_in_every_unit():
    cfg = config_lib.default().model
    cfg.depth, cfg.block, cfg.shortcut, cfg.width = 20, "basic", "conv1x1", 0.5
    from resnet_v2_jax import networks

    model = networks.build(cfg)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                            jnp.zeros((1, 8, 8, 3)))["params"]
    for s in (1, 2, 3):
        c = 8 * 2 ** (s - 1)
        assert shapes[f"stage{s}_unit1"]["projection"]["kernel"].shape == (1, 1, c // 2 if s > 1 else 8, c)
        assert shapes[f"stage{s}_units"]["unit"]["projection"]["kernel"].shape == (2, 1, 1, c, c)
    # On values: y = conv1x1(x) + F on a non-transition unit (the raw x, no BN on the projection).
    x = make_x()
    u = identity_unit(shortcut="conv1x1", shortcut_path="project")
    variables = random_variables(u, x)
    assert set(variables["params"]) == {"BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1", "projection"}
    branch_vars = {"params": {k: w for k, w in variables["params"].items() if k != "projection"},
                   "batch_stats": variables["batch_stats"]}
    _, f = reference_unit(FIG4["full_preact"], branch_vars, x)
    close(run(u, variables, x), ref_conv(x, variables["params"]["projection"]["kernel"]) + f)


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_dropout_shortcut_masks_without_rescaling_in_training(rate):
    x, variables, _ = _full_preact_case()
    f = branch("full_preact", variables, x)  # exact F: 0 * x + F
    u = identity_unit(shortcut="dropout", shortcut_dropout=rate)
    y = run(u, variables, x, rng=jax.random.PRNGKey(3))
    d, xs = np.asarray(y - f), np.asarray(x)
    dropped = np.abs(d) <= 1e-5
    kept = np.abs(d - xs) <= 1e-5
    assert (dropped | kept).all()  # each element carries x or nothing, never x / (1 - rate)
    keep_frac = kept[np.abs(xs) > 1e-3].mean()
    assert abs(keep_frac - (1 - rate)) < 0.05
    # A different key draws a different mask.
    y2 = run(u, variables, x, rng=jax.random.PRNGKey(4))
    assert np.abs(np.asarray(y2 - y)).max() > 1e-2


def test_dropout_shortcut_in_eval_mode_is_the_expectation():
    x, variables, _ = _full_preact_case()
    u = identity_unit(shortcut="dropout", train=False)
    f = branch("full_preact", variables, x, train=False)
    close(run(u, variables, x, train=False), 0.5 * x + f)


# ---------------------------------------------------------------------------------------------
# 1-layer skip (Table 3's "1-layer skip" ResNet-110).


def test_single_conv_unit_is_x_plus_conv_relu_bn_x():
    x = make_x()
    u = identity_unit("full_preact", block="single")
    variables = random_variables(u, x)
    p = variables["params"]
    assert set(p) == {"BatchNorm_0", "Conv_0"} and p["Conv_0"]["kernel"].shape == (3, 3, C, C)
    close(run(u, variables, x), x + ref_conv(jax.nn.relu(ref_bn(x, p["BatchNorm_0"])), p["Conv_0"]["kernel"]))


def test_single_block_resnet110_has_36_units_per_stage():
    cfg = config_lib.default().model
    cfg.depth, cfg.block = 110, "single"
    assert config_lib.stage_units(cfg) == ("single", (36, 36, 36))
    from resnet_v2_jax import networks

    model = networks.build(cfg)
    p = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                       jnp.zeros((1, 32, 32, 3)))["params"]
    for s in (1, 2, 3):
        assert {k for k in p[f"stage{s}_units"]["unit"] if k.startswith("Conv")} == {"Conv_0"}
        assert p[f"stage{s}_units"]["unit"]["Conv_0"]["kernel"].shape[0] == 35  # 36 units: 1 + 35 scanned
    n_convs = 1 + sum(
        (a.shape[0] if "units" in path[0].key else 1)
        for path, a in jax.tree_util.tree_flatten_with_path(p)[0]
        if path[-1].key == "kernel" and path[-2].key.startswith("Conv_")
    )
    assert n_convs + 1 == 110  # conv1 + 108 unit convs + fc
