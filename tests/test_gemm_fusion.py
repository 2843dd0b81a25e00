"""model.conv1x1_fusion: a BN-ReLU before a 1x1 stride-1 convolution as the prologue of one GEMM.

On a GPU the GEMMs are cuDNN-fusion regions; here the CPU is added to the platforms with the
regions left as they are, so the same arithmetic (matrix products reading x, never the BN-ReLU
output) runs and is compared with the convolutions. Every test leaves the CPU out again.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_loss_step

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import layers, networks


@pytest.fixture
def cpu_fusion():
    layers.GEMM_FUSION_PLATFORMS.add("cpu")
    try:
        yield
    finally:
        layers.GEMM_FUSION_PLATFORMS.discard("cpu")


def _bn_relu_conv(kernel_shape, strides, padding, groups, fuse):
    """value_and_grad of a weighted sum of `_bn_relu_conv`'s outputs, in float32."""
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(k[0], (groups, 8 // groups, 6, 6, kernel_shape[2])) * 2 + 1
    scale = 1 + 0.1 * jax.random.normal(k[1], (kernel_shape[2],))
    bias = 0.1 * jax.random.normal(k[2], (kernel_shape[2],))
    w = 0.2 * jax.random.normal(k[3], kernel_shape)
    out = jax.eval_shape(lambda: layers._conv(x.reshape((-1,) + x.shape[2:]), w, strides, padding))
    g = jax.random.normal(k[4], out.shape)

    def f(x, scale, bias, w):
        z, mean, var = layers._bn_relu_conv(x, scale, bias, w, 1e-5, jnp.dtype(jnp.float32), False, strides,
                                            padding, fuse)
        return jnp.sum(z * g) + jnp.sum(mean) + jnp.sum(var ** 2)

    step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
    return step, (x, scale, bias, w)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_fused_1x1_conv_is_the_conv_of_bn_relu_with_its_gradients(cpu_fusion, groups):
    """Also with BN over groups (the CIFAR experiments: half the batch), each with its own factors."""
    step, args = _bn_relu_conv((1, 1, 16, 24), 1, 0, groups, False)
    fused, _ = _bn_relu_conv((1, 1, 16, 24), 1, 0, groups, True)
    program = str(fused.trace(*args).jaxpr)
    # forward and weight gradient read x through the BN-ReLU prologue, the data gradient is a third product
    assert "conv_general_dilated" not in program and program.count("dot_general") == 3
    (loss, grads), (loss_ref, grads_ref) = fused(*args), step(*args)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for a, b in zip(grads, grads_ref, strict=True):  # near-zero elements: float rounding of the scale
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


@pytest.mark.parametrize("kernel_shape, strides, padding, groups", [
    ((3, 3, 16, 24), 1, 1, 1),  # not 1x1
    ((1, 1, 16, 24), 2, 0, 2),  # strided
])
def test_other_convolutions_keep_their_program(cpu_fusion, kernel_shape, strides, padding, groups):
    step, args = _bn_relu_conv(kernel_shape, strides, padding, groups, False)
    fused, _ = _bn_relu_conv(kernel_shape, strides, padding, groups, True)
    assert str(fused.trace(*args).jaxpr) == str(step.trace(*args).jaxpr)


def _network(fuse: bool, scan: bool = False, bn_group_size: int = 0):
    """A CIFAR bottleneck network (2 units a stage) on 4 images: loss and gradients."""
    c = config_lib.default().model
    c.block, c.depth, c.width, c.scan, c.conv1x1_fusion = "bottleneck", 20, 0.25, scan, fuse
    model = networks.build(c, bn_group_size=bn_group_size)
    return train_loss_step(model)


@pytest.mark.parametrize("scan, bn_group_size", [(False, 0), (True, 2)])
def test_the_network_fuses_every_1x1_conv_after_a_units_own_bn_relu(cpu_fusion, scan, bn_group_size):
    """Of the 6 units, the 3 that are not a stage's first apply their own BN-ReLU in Conv_0 (1x1; a
    stage's first shares it with the projection shortcut), and all 6 theirs in Conv_2 (1x1): those
    9 become GEMMs, the 3x3 Conv_1 stays. Same parameters, same loss, the gradients to float rounding."""
    step, params = _network(False, scan, bn_group_size)
    fused, fused_params = _network(True, scan, bn_group_size)
    assert jax.tree.structure(params) == jax.tree.structure(fused_params)
    base, program = step.lower(params).as_text(), fused.lower(params).as_text()
    # Each fused conv is three products (forward, both gradients) where there were three convolutions;
    # the head's Dense has its own 3.
    assert base.count("stablehlo.dot_general") == 3
    assert program.count("stablehlo.dot_general") == 3 + 3 * 9
    assert program.count("stablehlo.convolution") == base.count("stablehlo.convolution") - 3 * 9
    (loss, grads), (loss_ref, grads_ref) = fused(params), step(params)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5 * float(np.abs(b).max()))


def test_on_a_cpu_the_option_changes_nothing_and_says_so():
    """As shipped, only a GPU compiles the fused products: a CPU gets the convolutions' program."""
    step, params = _network(False)
    fused, _ = _network(True)
    assert not layers.gemm_fusion_available()
    assert str(fused.trace(params).jaxpr) == str(step.trace(params).jaxpr)


def test_the_option_says_what_it_needs():
    c = config_lib.default()
    c.model.conv1x1_fusion, c.model.bn_recompute_output = True, False
    with pytest.raises(ValueError, match="conv1x1_fusion=True needs model.bn_recompute_output=True"):
        config_lib.validate(c)
    c.model.bn_recompute_output = True
    config_lib.validate(c, num_devices=1)
    config_lib.validate(c, num_devices=4)  # the products run on each device's rows (tests/test_train.py)


@pytest.mark.parametrize("min_jaxlib", [(0, 0, 0), (99, 0, 0)])
def test_traced_for_a_gpu_the_products_are_cudnn_fusions_where_the_jaxlib_compiles_them(
        monkeypatch, caplog, min_jaxlib):
    """For a GPU (as bench/gpu_launches.py traces on this CPU) each fused conv's forward and weight
    gradient are cuDNN-fusion regions; under a jaxlib older than GEMM_FUSION_MIN_JAXLIB (0.10.2's XLA
    rejects the program) the convolutions stay, with a warning."""
    monkeypatch.setattr(layers, "TARGET_PLATFORM", "gpu")
    monkeypatch.setattr(layers, "GEMM_FUSION_MIN_JAXLIB", min_jaxlib)
    layers._cudnn_fusion.cache_clear()
    try:
        step, params = _network(False)
        fused, _ = _network(True)
        base, program = str(step.trace(params).jaxpr), str(fused.trace(params).jaxpr)
    finally:
        layers._cudnn_fusion.cache_clear()
    if min_jaxlib == (0, 0, 0):
        # 9 fused convs, each a forward and a weight-gradient region
        assert "cudnn_fusion" not in base and program.count("cudnn_fusion[") == 2 * 9
        assert len(re.findall(r"name=_bn_relu_gemm\b", program)) == len(re.findall(r"name=_bn_relu_gemm_wgrad\b", program)) == 9
    else:
        assert program == base
        assert "model.conv1x1_fusion ignored: it needs jaxlib >= 99.0.0" in caplog.text
