"""scan_reads: the GPU lowering of unrolled scans that reads each unit's rows by its own index.

It is registered for GPUs; here it is registered for the CPU too, so that the same rule compiles
and runs. Every test leaves it off (the CPU rule then lowers as JAX does).
"""

from __future__ import annotations

import inspect
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_loss_step
from jax._src.lax.control_flow import loops

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks, scan_reads


@pytest.fixture
def cpu_rule():
    try:
        yield lambda on: scan_reads.use(on, platforms=("cpu",))
    finally:
        scan_reads.use(False, platforms=("cpu",))


def _net(unroll: int):
    """A CIFAR network of 5 basic units a stage: 4 scanned, 2 loop iterations of 2 units at `unroll=2`."""
    c = config_lib.default().model
    c.block, c.depth, c.width, c.scan_unroll = "basic", 32, 0.5, unroll
    model = networks.build(c)
    return train_loss_step(model)


def test_unit_reads_change_the_program_not_the_numbers(cpu_rule):
    step, params = _net(unroll=2)
    jax_program = step.lower(params).as_text()
    reference = step(params)
    assert cpu_rule(True) is True and scan_reads.in_effect()
    program = step.lower(params).as_text()
    # Each unit of an iteration now indexes the flat stack itself: more dynamic-index calls, and no
    # stacked input of the 4 scanned units is viewed as [iterations, units, ...] = [2, 2, ...].
    blocks = re.compile(r"stablehlo.reshape %\S+ : \(tensor<4x[^)]*\) -> tensor<2x2x")
    assert program.count("call @dynamic_index_in_dim") > jax_program.count("call @dynamic_index_in_dim")
    assert blocks.search(jax_program) and not blocks.search(program)
    got = step(params)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)  # the same loss and gradient to the bit
    assert cpu_rule(False) is False and not scan_reads.in_effect()
    assert step.lower(params).as_text() == jax_program  # off again: JAX's own lowering


def test_on_a_cpu_the_gpu_rule_changes_nothing_and_says_so():
    """As the config sets it (GPU platforms only), a CPU compiles JAX's program, and the benchmark's
    line says the option was not in effect."""
    step, params = _net(unroll=2)
    jax_program = step.lower(params).as_text()
    try:
        assert scan_reads.use(True) is True and not scan_reads.in_effect()
        assert step.lower(params).as_text() == jax_program
    finally:
        scan_reads.use(False)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_remainder_and_reverse_scans_give_the_same_values(cpu_rule, reverse):
    """7 steps, 3 a loop iteration: 2 iterations read by the edited lines, 1 step of remainder."""
    def f(carry, xs):
        def body(c, x):
            return jnp.tanh(c * x[0] + x[1]), c * x[1]
        return jax.lax.scan(body, carry, xs, unroll=3, reverse=reverse)

    xs = (jnp.linspace(-1.0, 1.0, 7 * 5).reshape(7, 5), jnp.linspace(2.0, -3.0, 7 * 5).reshape(7, 5))
    loss = jax.jit(jax.value_and_grad(lambda c, xs: sum(jnp.sum(o ** 2) for o in jax.tree.leaves(f(c, xs))),
                                      argnums=(0, 1)))
    carry = jnp.full((5,), 0.3)
    reference = loss(carry, xs)
    blocks = re.compile(r"stablehlo.reshape %\S+ : \(tensor<6x5xf32>\) -> tensor<2x3x5xf32>")  # [iterations, units]
    assert blocks.search(loss.lower(carry, xs).as_text())
    cpu_rule(True)
    assert not blocks.search(loss.lower(carry, xs).as_text())
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(loss(carry, xs)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_unit_per_iteration_is_lowered_as_jax_does(cpu_rule):
    step, params = _net(unroll=1)
    jax_program = step.lower(params).as_text()
    cpu_rule(True)
    assert step.lower(params).as_text() == jax_program


def test_the_installed_jax_has_the_lines_the_change_edits():
    source = inspect.getsource(loops._scan_impl)
    edited = scan_reads.edited_source(source)
    assert edited != source and "trip * n + i" in edited


def test_another_jax_keeps_its_own_lowering_with_a_warning(monkeypatch, caplog):
    def refuse(source):
        raise ValueError("lax.scan's lowering is not the one scan_reads edits (no single 'xss = ...')")

    monkeypatch.setattr(scan_reads, "edited_source", refuse)
    monkeypatch.setitem(scan_reads._state, "rules", None)
    with caplog.at_level(logging.WARNING):
        assert scan_reads.use(True, platforms=("cpu",)) is False
    assert "model.scan_unit_reads ignored: lax.scan's lowering is not the one scan_reads edits" in caplog.text
    assert scan_reads._state["on"] == set() and not scan_reads.in_effect()
