"""layers.BatchNorm's training path and layers.max_pool: hand-written gradients, checked against
autodiff (of the textbook formula; of nn.max_pool), and the residuals they save (what makes them
worth having: fewer saved tensors, fewer kernels, fewer bytes)."""

from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from resnet_v2_jax import column_sums, layers
from resnet_v2_jax import config as config_lib

EPS = 1e-5


def textbook_bn(x, scale, bias, relu, dtype):
    """Grouped x (G, g, H, W, C): two-pass statistics per group, autodiff for the gradient."""
    xf = x.astype(jnp.float32)
    mean = xf.mean((1, 2, 3), keepdims=True)
    var = ((xf - mean) ** 2).mean((1, 2, 3), keepdims=True)
    y = ((xf - mean) / jnp.sqrt(var + EPS) * scale + bias).astype(dtype)
    return (jax.nn.relu(y) if relu else y), mean, var


def inputs(dtype=jnp.float32):
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    x = (jax.random.normal(k[0], (2, 4, 5, 5, 8)) * 3 + 1).astype(dtype)  # 2 groups of 4 examples
    scale, bias = jax.random.normal(k[1], (8,)), jax.random.normal(k[2], (8,))
    weights = (jax.random.normal(k[3], x.shape), jax.random.normal(k[4], (2, 1, 1, 1, 8)),
               jax.random.normal(k[5], (2, 1, 1, 1, 8)))
    return x, scale, bias, weights


def loss(bn, relu, weights, dtype):
    """A loss on all three outputs, so the mean and variance cotangents are exercised too."""
    wy, wm, wv = weights

    def f(x, scale, bias):
        y, mean, var = bn(x, scale, bias, relu, jnp.dtype(dtype))
        return jnp.sum(y.astype(jnp.float32) * wy) + jnp.sum(mean * wm) + jnp.sum(var * wv)

    return f


def package_bn(x, scale, bias, relu, dtype):
    return layers._bn_train(x, scale, bias, relu, EPS, dtype)


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_gradient_equals_autodiff_of_the_textbook_formula(relu):
    x, scale, bias, weights = inputs()
    got = jax.grad(loss(package_bn, relu, weights, jnp.float32), (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(textbook_bn, relu, weights, jnp.float32), (0, 1, 2))(x, scale, bias)
    for name, g, r in zip(("x", "scale", "bias"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=2e-5 * float(jnp.abs(r).max()),
                                   err_msg=name)
    for name, a, b in zip(("y", "mean", "var"), package_bn(x, scale, bias, relu, jnp.float32),
                          textbook_bn(x, scale, bias, relu, jnp.float32)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_bfloat16_gradient_is_the_float32_gradient_to_bfloat16_precision(relu):
    """bf16 activations, float32 statistics and gradient arithmetic: only the bf16 rounding of x and dx."""
    x, scale, bias, weights = inputs(jnp.bfloat16)
    got = jax.grad(loss(package_bn, relu, weights, jnp.bfloat16), (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(textbook_bn, relu, weights, jnp.float32), (0, 1, 2))(x.astype(jnp.float32), scale, bias)
    assert got[0].dtype == jnp.bfloat16
    for name, g, r in zip(("x", "scale", "bias"), got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), rtol=0,
                                   atol=2e-2 * float(jnp.abs(r).max()), err_msg=name)


@pytest.mark.parametrize("rows,channels,want", [
    (128 * 32 * 32, 16, 32),  # CIFAR stage 1 at batch 128: 32 kernels' worth of 4096 rows
    (128 * 16 * 16, 32, 16),  # stage 2: 16 partials (XLA adds fewer than 32 inline from 32 channels)
    (128 * 8 * 8, 64, 16),
    (64 * 8 * 8, 64, 1),  # 4096 rows: XLA's own reduction is one kernel already
    (256 * 56 * 56, 64, 1),  # ImageNet stage 1: 16 partials would be 50,176 rows each
    (4097 * 16, 16, 1),  # not divisible
])
def test_partial_sums_are_as_many_as_xla_gpu_adds_inline_over_at_most_4096_rows(rows, channels, want):
    assert layers._partial_count(rows, channels) == want


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_with_partial_sums_is_the_same_function_and_gradient(relu):
    """model.bn_partial_sums changes how the forward's sums are reduced (one kernel of partials
    on a GPU), not what they are: the outputs and gradients are the textbook BN's."""
    k = jax.random.split(jax.random.PRNGKey(7), 6)
    x = jax.random.normal(k[0], (2, 8, 32, 32, 16)) * 2 + 3  # 8,192 rows a group: 32 partials
    scale, bias = 1 + 0.1 * jax.random.normal(k[1], (16,)), 0.1 * jax.random.normal(k[2], (16,))
    weights = (jax.random.normal(k[3], x.shape), jax.random.normal(k[4], (2, 1, 1, 1, 16)),
               jax.random.normal(k[5], (2, 1, 1, 1, 16)))

    def bn(partial_sums):
        sums = "partials" if partial_sums else "xla"
        return lambda x, scale, bias, relu, dtype: layers._bn_train(x, scale, bias, relu, EPS, dtype, False, sums)

    jaxpr = str(jax.make_jaxpr(bn(True), static_argnums=(3, 4))(x, scale, bias, relu, jnp.dtype(jnp.float32)))
    assert "f32[2,32,16]" in jaxpr and "f32[2,32,16]" not in str(
        jax.make_jaxpr(bn(False), static_argnums=(3, 4))(x, scale, bias, relu, jnp.dtype(jnp.float32)))
    # Against the two-pass textbook formula, as the plain path is checked above. With this data's
    # mean of 3, sum(x^2)/n - mean^2 cancels; the partial sums are the more accurate ones here
    # (variance off float64 by 1.8e-6 relative, the plain reduction on this CPU by 1.5e-5).
    for name, a, b in zip(("y", "mean", "var"), bn(True)(x, scale, bias, relu, jnp.float32),
                          textbook_bn(x, scale, bias, relu, jnp.float32)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
    got = jax.grad(loss(bn(True), relu, weights, jnp.float32), (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(textbook_bn, relu, weights, jnp.float32), (0, 1, 2))(x, scale, bias)
    for name, g, r in zip(("x", "scale", "bias"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=2e-5 * float(jnp.abs(r).max()),
                                   err_msg=name)


@pytest.mark.parametrize("rows,channels,groups,tiling,want", [
    (256 * 56 * 56, 64, 1, "FORWARD", (64, 64, 28, 448)),  # ResNet-50 stage 1 at batch 256: 448 programs
    (256 * 7 * 7, 2048, 1, "FORWARD", (128, 32, 14, 448)),  # stage 4: 16 column strips of 28 row slabs
    (256 * 14 * 14, 256, 2, "FORWARD", (128, 32, 14, 448)),  # two BN groups: slabs never straddle them
    (256 * 56 * 56, 256, 1, "BACKWARD", (128, 64, 49, 512)),  # 8192-value tiles, the H200's plan there
    (256 * 7 * 7, 2048, 1, "BACKWARD", (128, 64, 7, 448)),
    (64 * 8 * 8, 48, 1, "FORWARD", None),  # channels not a power of two: XLA's sums
    (7 * 9, 16, 1, "BACKWARD", None),  # odd rows: no tile height
])
def test_pallas_sums_plan_tiles_each_pass_into_about_528_programs(rows, channels, groups, tiling, want):
    tiling = getattr(column_sums, tiling)
    plan = column_sums.plan(rows, channels, groups, tiling)
    if want is None:
        assert plan is None
        return
    bc, br, its = plan
    assert (bc, br, its, groups * rows // (br * its) * (channels // bc)) == want
    assert column_sums.program_count(rows, channels, plan, groups) == want[3]
    assert bc * br <= tiling.values and rows % (br * its) == 0


def test_a_balanced_plan_gives_the_busiest_multiprocessor_within_2_percent_of_an_even_share():
    """Tiling.sms: ResNet-50's 11 BN shapes at batch 256 (rows 2^a 7^b), planned for an H200's 132
    multiprocessors. The plain plans mostly land on 448 programs, whose busiest multiprocessor reads
    18% more than an even share; the balanced ones stay within 2%, with 264-1056 programs."""
    shapes = [(56, 64), (56, 128), (56, 256), (28, 128), (28, 256), (28, 512), (14, 256), (14, 512),
              (14, 1024), (7, 512), (7, 2048)]

    def excess(tiling, size, channels):
        planned = column_sums.plan(256 * size * size, channels, 1, tiling)
        programs, its = column_sums.program_count(256 * size * size, channels, planned), planned[2]
        return column_sums.busiest_tiles(programs, its, 132) / (programs * its / 132), programs

    for base in (column_sums.FORWARD, column_sums.BACKWARD):
        plain = [excess(base, *s) for s in shapes]
        balanced = [excess(base._replace(sms=132), *s) for s in shapes]
        assert sum(p == 448 for _, p in plain) >= 7 and max(e for e, _ in plain) > 1.17
        assert all(e < 1.02 and 264 <= p <= 1056 for e, p in balanced), balanced
    assert column_sums.plan(256 * 56 * 56, 256, 1, column_sums.BACKWARD._replace(sms=132)) == (128, 64, 64)


def test_device_tiling_balances_over_the_multiprocessors_the_device_reports(monkeypatch):
    """Tiling.sms=DEVICE plans as the count this process's GPU reports (an H200: 132), and as an
    unbalanced plan without a GPU (this CPU, a TPU)."""
    device_tiling = column_sums.BACKWARD._replace(sms=column_sums.DEVICE)
    rows = 256 * 56 * 56
    assert column_sums.multiprocessors(column_sums.DEVICE) == 0  # a CPU: no multiprocessors to balance over
    assert column_sums.plan(rows, 256, 1, device_tiling) == column_sums.plan(rows, 256, 1, column_sums.BACKWARD)
    monkeypatch.setattr(jax, "local_devices", lambda *a: [types.SimpleNamespace(platform="gpu", core_count=132)])
    assert column_sums.multiprocessors(column_sums.DEVICE) == 132 and column_sums.multiprocessors(7) == 7
    monkeypatch.setattr(jax, "local_devices", lambda *a: [types.SimpleNamespace(platform="tpu", core_count=2)])
    assert column_sums.multiprocessors(column_sums.DEVICE) == 0
    monkeypatch.setattr(jax, "local_devices", lambda *a: [types.SimpleNamespace(platform="gpu", core_count=132)])
    balanced = column_sums.plan(rows, 256, 1, column_sums.BACKWARD._replace(sms=132))
    assert column_sums.plan(rows, 256, 1, device_tiling) == balanced != column_sums.plan(rows, 256, 1, column_sums.BACKWARD)


class _FakeGpu:
    platform = "gpu"

    def __init__(self, kind, capability):
        self.device_kind, self.compute_capability = kind, capability


@pytest.mark.parametrize("devices,want", [
    ([_FakeGpu("NVIDIA H200", "9.0")], True),
    ([_FakeGpu("NVIDIA A100-SXM4-80GB", "8.0")], True),
    ([_FakeGpu("Tesla V100-SXM2-16GB", "7.0")], False),  # the ImageNet default must still compile there
    ([_FakeGpu("AMD Instinct MI250X", "gfx90a")], False),  # no CUDA capability: XLA's sums
    (None, True),  # no GPU here: compiled for an H200 on this CPU (bench/gpu_launches.py)
])
def test_pallas_sums_run_on_cuda_gpus_of_ampere_and_later_else_xla_sums_said_once(monkeypatch, caplog, devices,
                                                                                   want):
    """model.bn_pallas_sums, on for the ImageNet experiments: a GPU older than
    PALLAS_SUMS_MIN_CAPABILITY (8.0) or without a CUDA capability keeps XLA's sums, with one warning."""
    monkeypatch.setattr(layers, "TARGET_PLATFORM", "gpu")
    monkeypatch.setattr(jax, "local_devices", lambda: devices if devices is not None else jax.devices("cpu"))
    layers._pallas_sums_gpu_ok.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert [layers.pallas_sums_available() for _ in range(3)] == [want] * 3
    finally:
        layers._pallas_sums_gpu_ok.cache_clear()
    warned = [r.getMessage() for r in caplog.records if "bn_pallas_sums ignored" in r.getMessage()]
    assert len(warned) == (0 if want else 1), warned
    if not want:
        assert devices[0].device_kind in warned[0] and "needs a CUDA GPU of 8.0 or later" in warned[0]


@pytest.fixture
def pallas_on_cpu(monkeypatch):
    """The Pallas kernel's program on this CPU, under Pallas's interpreter."""
    monkeypatch.setattr(column_sums, "PLATFORMS", {"gpu", "cpu"})


@pytest.mark.parametrize("relu,dtype", [(False, jnp.float32), (True, jnp.float32), (True, jnp.bfloat16)])
def test_batchnorm_with_pallas_sums_is_the_same_function_and_gradient(relu, dtype, pallas_on_cpu):
    """model.bn_pallas_sums moves BN's forward and backward sums into `column_sums`' kernel: the
    outputs and gradients are XLA's sums' (float32 rounding; the ReLU mask the same arithmetic)."""
    x, scale, bias, weights = inputs(dtype)
    x = jnp.concatenate([x] * 2, axis=1)  # 2 groups of 8 examples of 5x5: 200 rows, tiles of 8

    def bn(sums):
        return lambda x, scale, bias, relu, dtype: layers._bn_train(x, scale, bias, relu, EPS, dtype, False, sums)

    weights = (jnp.concatenate([weights[0]] * 2, axis=1),) + weights[1:]
    f = loss(bn("pallas"), relu, weights, dtype)
    assert str(jax.make_jaxpr(jax.grad(f, (0, 1, 2)))(x, scale, bias)).count("pallas_call") == 2
    got = jax.grad(f, (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(bn("xla"), relu, weights, dtype), (0, 1, 2))(x, scale, bias)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for name, g, r in zip(("x", "scale", "bias"), got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol,
                                   atol=tol * float(jnp.abs(r.astype(jnp.float32)).max()), err_msg=name)
    for name, a, b in zip(("y", "mean", "var"), bn("pallas")(x, scale, bias, relu, jnp.dtype(dtype)),
                          bn("xla")(x, scale, bias, relu, jnp.dtype(dtype))):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol,
                                   err_msg=name)


def test_pallas_sums_option_says_what_it_needs():
    c = config_lib.default()
    c.model.bn_pallas_sums = True
    config_lib.validate(c, num_devices=1)
    config_lib.validate(c, num_devices=4)  # the kernel runs on each device's rows (tests/test_train.py)
    c.model.bn_partial_sums = True
    with pytest.raises(ValueError, match="two ways to reduce BN's sums: set one"):
        config_lib.validate(c)


def test_pallas_sums_leave_a_cpu_to_xla():
    """As shipped, only a GPU compiles the kernel: on a CPU the option traces XLA's sums."""
    x, scale, bias, weights = inputs()
    x = jnp.concatenate([x] * 2, axis=1)
    jaxprs = [str(jax.make_jaxpr(lambda x, s=s: layers._bn_train(x, scale, bias, True, EPS, jnp.dtype(jnp.float32),
                                                               False, s))(x)) for s in ("pallas", "xla")]
    assert not layers.pallas_sums_available() and jaxprs[0] == jaxprs[1] and "pallas_call" not in jaxprs[0]


def saved(fn, *args, capsys):
    print_saved_residuals(fn, *args)
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if line.strip() and "from a constant" not in line and "from a literal" not in line]  # the loss's weights


def test_batchnorm_relu_saves_its_input_and_one_stack_of_statistics(capsys):
    """Autodiff of the same op saves ten arrays here (a float32 copy of x, the ReLU mask, per-channel
    intermediates); in a scanned stage each saved array is one more kernel per unit on the GPU."""
    x, scale, bias, weights = inputs(jnp.bfloat16)
    ours = saved(loss(package_bn, True, weights, jnp.bfloat16), x, scale, bias, capsys=capsys)
    assert len(ours) == 2, ours
    assert "bf16[2,4,5,5,8]" in ours[0] and "argument x" in ours[0]
    assert "f32[4,2,1,1,1,8]" in ours[1]

    def autodiff_bn(x, scale, bias, relu, dtype):
        return layers._bn_forward(x, scale, bias, relu, EPS, dtype, False)[:3]

    theirs = saved(loss(autodiff_bn, True, weights, jnp.bfloat16), x, scale, bias, capsys=capsys)
    assert len(theirs) >= 8, theirs
    assert any("f32[2,4,5,5,8]" in line for line in theirs), theirs  # the float32 copy of x


def test_batchnorm_module_fuses_relu_and_keeps_running_statistics():
    """BatchNorm(relu=True) is relu(BatchNorm(x)) in train and eval mode, with the same statistics."""
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 4, 4, 6)) * 2 + 0.5
    fused, plain = layers.BatchNorm(False, group_size=4, relu=True), layers.BatchNorm(False, group_size=4)
    variables = plain.init(jax.random.PRNGKey(0), x)
    y1, s1 = fused.apply(variables, x, mutable=["batch_stats"])
    y2, s2 = plain.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(jax.nn.relu(y2)))
    jax.tree.map(np.testing.assert_array_equal, s1, s2)
    assert float(jnp.abs(s1["batch_stats"]["mean"]).max()) > 0.01  # the update happened
    trained = {"params": variables["params"], **s1}
    e1 = layers.BatchNorm(True, relu=True).apply(trained, x)
    e2 = layers.BatchNorm(True).apply(trained, x)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(jax.nn.relu(e2)))


STEM_POOL = [(shape, dtype, 3, 2, 1) for shape in [(2, 112, 112, 8), (3, 7, 7, 4), (2, 8, 9, 3)]
             for dtype in [jnp.float32, jnp.bfloat16]]
OTHER_POOLS = [((2, 8, 9, 3), jnp.float32, *geometry) for geometry in [(3, 1, 1), (2, 2, 0), (3, 3, 0), (2, 3, 1)]]


@pytest.mark.parametrize("platform", [None, "gpu"], ids=["slices", "gathers"])
@pytest.mark.parametrize("shape,dtype,window,stride,padding", STEM_POOL + OTHER_POOLS)
def test_max_pool_is_nn_max_pool_and_its_gradient_exactly_ties_included(shape, dtype, window, stride, padding,
                                                                         platform, monkeypatch):
    """The ImageNet stem's pool follows BN-ReLU, so windows of equal values (zeros) are common: the
    gradient must go to the same element as jax.grad of nn.max_pool gives it (the first maximum).
    Other geometries check the backward's phases: overlapping windows, none, and gaps (2, 3, 1).
    Both forms: the CPU's (strided slices, phases interleaved) and the GPU's (clamped gathers tested
    by value, layers.TARGET_PLATFORM="gpu"; run here on the CPU)."""
    monkeypatch.setattr(layers, "TARGET_PLATFORM", platform)
    jax.clear_caches()
    probe = jnp.zeros((1, 6, 6, 1), dtype)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: layers.max_pool(x, 3, 2, 1).astype(jnp.float32).sum()))(probe))
    assert ("gather" in jaxpr) == (platform == "gpu")

    def reference(x):
        return nn.max_pool(x, (window, window), strides=(stride, stride), padding=[(padding, padding)] * 2)

    def ours(x):
        return layers.max_pool(x, window, stride, padding)

    @jax.jit  # one compile per side: op by op, each case took 3-8 s on a 2-core CPU
    def value_and_pullback(x, g):
        ys = [jax.vjp(f, x) for f in (ours, reference)]
        return [y for y, _ in ys], [pullback(g)[0] for _, pullback in ys]

    rng = np.random.default_rng(0)  # numpy: after clear_caches each eager jax op would compile again
    x = np.maximum(rng.standard_normal(shape, np.float32), 0)
    x[:, ::3] = 1.0  # ties at a nonzero value too
    x = jnp.asarray(x, dtype)
    y_shape = jax.eval_shape(reference, x).shape
    g = jnp.asarray(rng.integers(-4, 5, y_shape), dtype)  # small integers: exact sums
    (y, y_ref), (dx, dx_ref) = value_and_pullback(x, g)
    assert y.dtype == dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    assert dx.dtype == dtype
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))
    assert float(jnp.abs(dx_ref.astype(jnp.float32)).sum()) > 0


def test_max_pool_gradient_saves_an_int8_window_index_and_scatters_nothing(capsys):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4), jnp.bfloat16)
    grad = jax.grad(lambda x: layers.max_pool(x, 3, 2, 1).astype(jnp.float32).sum())
    assert "select_and_scatter" not in str(jax.make_jaxpr(grad)(x))
    assert "select_and_scatter" in str(jax.make_jaxpr(jax.grad(
        lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1)] * 2).astype(jnp.float32).sum()))(x))
    residuals = saved(lambda x: layers.max_pool(x, 3, 2, 1).astype(jnp.float32).sum(), x, capsys=capsys)
    assert len(residuals) == 1 and "i8[2,4,4,4]" in residuals[0], residuals  # 1 byte an output


@pytest.mark.parametrize("size,kernel,padding", [(224, 7, 3), (15, 5, 2), (12, 4, 0), (8, 7, 3)])
def test_space_to_depth_conv_is_the_strided_conv_forward_and_weight_gradient(size, kernel, padding):
    """Odd and even sizes and kernels, padding odd, even or none: the blocked stride-1 convolution gives the
    stride-2 one's output and weight gradient (float32 rounding), and only its own conv is traced."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 3, 8))
    dn = ("NHWC", "HWIO", "NHWC")

    def strided(w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), [(padding, padding)] * 2, dimension_numbers=dn)

    def blocked(w):
        return layers.space_to_depth_conv(x, w, (2, 2), [(padding, padding)] * 2, dimension_numbers=dn)

    y, y_ref = blocked(w), strided(w)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-4)
    g, g_ref = (jax.grad(lambda w, f=f: (f(w) ** 2).sum())(w) for f in (blocked, strided))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(g_ref).max()))
    jaxpr = str(jax.make_jaxpr(blocked)(w))
    assert jaxpr.count("conv_general_dilated") == 1 and "window_strides=(1, 1)" in jaxpr


@pytest.mark.parametrize("dtype,channels", [(jnp.bfloat16, 16), (jnp.float32, 12)])
def test_space_to_depth_conv_aligned_pads_the_blocks_with_zero_channels(dtype, channels):
    """align_bytes=16 (model.stem_align_channels): the blocked conv reads 16 channels in bfloat16 (12
    already fill 48 bytes in float32); the output and the weight gradient are the unaligned ones."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20, 3), dtype)
    w = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 3, 8), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(w, align):
        return layers.space_to_depth_conv(x, w, (2, 2), [(3, 3)] * 2, dimension_numbers=dn, align_bytes=align)

    y, y_ref = conv(w, 16), conv(w, 0)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=2e-2, atol=2e-2)
    g, g_ref = (jax.grad(lambda w, a=a: (conv(w, a).astype(jnp.float32) ** 2).sum())(w) for a in (16, 0))
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), rtol=2e-2,
                               atol=2e-2 * float(jnp.abs(g_ref.astype(jnp.float32)).max()))
    jaxpr = str(jax.make_jaxpr(lambda w: conv(w, 16))(w))
    name = jnp.dtype(dtype).name.replace("bfloat16", "bf16").replace("float32", "f32")
    assert f"{name}[2,11,11,{channels}]" in jaxpr and f"{name}[4,4,{channels},8]" in jaxpr, jaxpr


def test_space_to_depth_conv_leaves_other_geometries_to_the_plain_conv():
    x, w = jnp.ones((1, 11, 11, 3)), jnp.ones((6, 6, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for strides, padding in [((1, 1), [(1, 1)] * 2), ((2, 2), [(1, 2)] * 2), ((2, 2), [(2, 2)] * 2)]:
        conv = functools.partial(layers.space_to_depth_conv, x, window_strides=strides, padding=padding,
                                 dimension_numbers=dn)
        jaxpr = str(jax.make_jaxpr(conv)(w))
        assert f"window_strides={strides}" in jaxpr, (strides, padding)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_with_conv_is_batchnorm_then_the_conv(train):
    """BatchNorm(relu=True)(x, conv=(kernel, strides, padding)) is the conv of BN-ReLU's output, with
    the same running averages and gradients (the training path keeps x, not the output)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 8)) * 2 + 1
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 5))
    bn = layers.BatchNorm(use_running_average=not train, relu=True, group_size=2)
    variables = bn.init(jax.random.PRNGKey(2), x)
    variables = {"params": jax.tree.map(lambda a: a + 0.3, variables["params"]),
                 "batch_stats": jax.tree.map(lambda a: a + 0.5, variables["batch_stats"])}

    def fused(params, kernel):
        return bn.apply({**variables, "params": params}, x, conv=(kernel, 2, 1), mutable=["batch_stats"])

    def separate(params, kernel):
        y, stats = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return layers._conv(y, kernel, 2, 1), stats

    (z, stats), (z_ref, stats_ref) = fused(variables["params"], kernel), separate(variables["params"], kernel)
    assert z.shape == (4, 3, 3, 5)
    np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-6, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    w = jax.random.normal(jax.random.PRNGKey(3), z.shape)
    grads = [jax.grad(lambda p, k, f=f: (f(p, k)[0] * w).sum(), argnums=(0, 1))(variables["params"], kernel)
             for f in (fused, separate)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="relu=True"):
        layers.BatchNorm(use_running_average=False).init(jax.random.PRNGKey(2), x, conv=(kernel, 1, 1))
