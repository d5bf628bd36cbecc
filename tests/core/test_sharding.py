"""Particle sharding: SMC on 8 fake CPU devices equals SMC on one device (same key), also over a token
rollout whose KV cache is resampled in place.

The multi-device check runs in a subprocess, since the number of CPU devices must be set before JAX
initialises its backend.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import multiprocess_smc
from itscale.core import sharding

_EIGHT_DEVICES = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    import itscale as its
    from itscale.core import sharding

    assert len(jax.devices()) == 8, jax.devices()
    mesh = sharding.particle_mesh()


    def euler_maruyama(model_fn):  # x <- x + model(x, t) dt + 0.5 sqrt(dt) z on t: 1 -> 0
        model_fn = its.counted(model_fn)

        def step(key, x, ctx, params):
            t, dt = 1.0 - ctx.step / ctx.num_steps, 1.0 / ctx.num_steps
            u = model_fn(x, t)
            return x + u * dt + 0.5 * jnp.sqrt(dt) * jax.random.normal(key, x.shape), {"x0_hat": x + t * u}

        return its.Sampler(lambda key, x, params: x, step, lambda x: x)

    N = 64
    x = jax.random.normal(jax.random.key(3), (N, 2))
    reward = lambda x: -jnp.sum((x - 0.5) ** 2, axis=-1)

    def both(model_fn):  # the same run on one device and with the particles split over 8
        steered = its.search.smc(euler_maruyama(model_fn), reward, num_particles=N, ess_threshold=0.9)
        run = lambda x: its.run(steered, jax.random.key(0), x, num_steps=10, trace=1)
        one, many = run(jax.device_put(x, jax.devices()[0])), run(sharding.shard_particles(x, mesh))
        assert many.output.particles.sharding.spec == jax.sharding.PartitionSpec("particles")
        assert len(many.output.particles.sharding.device_set) == 8
        return one, many

    # An elementwise model: every particle's arithmetic is the same on any layout, so the particles are
    # bitwise equal; reductions over the split axis (log Z, normalisation) may round differently.
    one, many = both(lambda x, t: -(1.0 + t) * x)
    np.testing.assert_array_equal(one.trace.info["resampled"], many.trace.info["resampled"])
    assert int(one.output.info["num_resamples"]) >= 3
    np.testing.assert_array_equal(one.output.particles, many.output.particles)
    np.testing.assert_allclose(one.output.log_weights, many.output.log_weights, rtol=1e-6)
    np.testing.assert_allclose(one.output.log_normalizer, many.output.log_normalizer, rtol=1e-6)

    # Global argmax and gather on a sharded axis.
    values = sharding.shard_particles(jnp.arange(N, dtype=jnp.float32) % 37, mesh)
    assert int(jax.jit(sharding.global_argmax)(values)) == 36
    picked = jax.jit(sharding.gather_particles)(values, jnp.array([36, 0, 63]))
    np.testing.assert_array_equal(picked, [36.0, 0.0, 63 % 37])

    # replicate: every device reads the same host buffer (one pointer), with the right values.
    weights = {"w": np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32), "b": jnp.arange(3)}
    shared = sharding.replicate(weights, mesh)
    for name, leaf in shared.items():
        assert leaf.sharding.spec == jax.sharding.PartitionSpec() and len(leaf.addressable_shards) == 8
        assert len({shard.data.unsafe_buffer_pointer() for shard in leaf.addressable_shards}) == 1, name
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(shard.data, weights[name])
    np.testing.assert_allclose(jax.jit(lambda t, x: x @ t["w"])(shared, sharding.shard_particles(
        jnp.ones((16, 64)), mesh)), np.ones((16, 64)) @ weights["w"], rtol=1e-5)

    # Samplers without a global step keep every row on its device: no collective inside the loop
    # (the non-finite tally and the KV-cache and token writes are row-local), the same values.
    from flax import nnx
    from itscale.core.run import lower
    from itscale.models.transformer import Transformer, logits_fn


    def loop_collectives(sampler, x):
        text = lower(sampler, jax.random.key(1), x, num_steps=6).compile().as_text()
        ops = ("all-reduce(", "all-gather(", "all-to-all(", "collective-permute(", "reduce-scatter(")
        return [line for line in text.splitlines() if any(op in line for op in ops) and "/while/" in line]


    velocity = its.models.as_fn(its.models.MLP(2, width=16, depth=2, rngs=nnx.Rngs(0)))
    model = Transformer(64, width=32, depth=2, num_heads=2, max_len=16, rngs=nnx.Rngs(0))
    prompts = jax.random.randint(jax.random.key(0), (N // 4, 4), 0, 64)
    cases = {"ode": (its.refine.ode(velocity, "heun"), x),
             "ode, stages in a loop": (its.refine.ode(velocity, "rk4"), jnp.tile(x, (64, 1))),
             "rollout": (its.tokens.rollout(logits_fn(model), init_cache=model.init_cache, max_len=16), prompts)}
    for name, (sampler, start) in cases.items():
        split = sharding.shard_particles(start, mesh)
        assert loop_collectives(sampler, split) == [], name
        one, many = (its.run(sampler, jax.random.key(1), s, num_steps=6) for s in (start, split))
        np.testing.assert_allclose(jax.tree.leaves(one.output)[0], jax.tree.leaves(many.output)[0], rtol=1e-5)
        assert int(many.stats.nonfinite) == 0 and int(many.stats.first_nonfinite_step) == -1

    # SMC over a token rollout resamples the KV-cache rows (5 KiB each) in place on the split axis:
    # the same particles as on one device.
    from itscale.search import in_place
    lm = Transformer(64, width=128, depth=1, num_heads=2, max_len=16, rngs=nnx.Rngs(0))
    assert lm.init_cache(1, 4 + 6).keys[0].nbytes >= in_place.IN_PLACE_MIN_ROW_BYTES  # prompt + new tokens
    stepwise = its.tokens.rollout(logits_fn(lm), init_cache=lm.init_cache, max_len=16, noise="step")
    steered = its.search.smc(stepwise, lambda g: (g.tokens[:, -1] % 3 == 0) * 1.0, num_particles=N,
                             ess_threshold=1.0)
    start = jnp.repeat(prompts[:1], N, axis=0)
    one, many = (its.run(steered, jax.random.key(2), s, num_steps=6)
                 for s in (start, sharding.shard_particles(start, mesh)))
    assert int(one.output.info["num_resamples"]) == 5
    np.testing.assert_array_equal(one.output.particles.tokens, many.output.particles.tokens)
    print("OK")
""")


@pytest.mark.multidevice
def test_smc_on_eight_devices_matches_one_device():
    env = multiprocess_smc.cpu_environment()
    done = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-4000:]


def test_write_columns_is_a_per_row_indexed_write_dropping_out_of_range_columns():
    rng = np.random.default_rng(0)
    buffer = rng.normal(size=(3, 2, 6, 4)).astype(np.float32)
    columns = np.array([[0, 5], [2, 6], [7, 1]])               # 6 and 7 are past the 6 slots: dropped
    values = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    expected = buffer.copy()
    for b in range(3):
        for j in range(2):
            if columns[b, j] < 6:
                expected[b, :, columns[b, j]] = values[b, :, j]
    np.testing.assert_array_equal(jax.jit(sharding.write_columns, static_argnames="axis")(
        buffer, columns, values, axis=2), expected)
    flat = sharding.write_columns(jnp.zeros((3, 4), jnp.int32), jnp.array([3, 0, 9]), jnp.array([7, 8, 9]))
    np.testing.assert_array_equal(flat, [[0, 0, 0, 7], [8, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="axis must be >= 1"):
        sharding.write_columns(buffer, columns, values, axis=0)


def test_replicate_places_whole_leaves_with_their_values():
    mesh = sharding.particle_mesh(jax.devices()[:1])
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "scale": jnp.float32(2.0), "ids": np.arange(4)}
    placed = sharding.replicate(tree, mesh)
    for name, leaf in placed.items():
        assert leaf.sharding.spec == jax.sharding.PartitionSpec() and leaf.dtype == jnp.asarray(tree[name]).dtype
        np.testing.assert_array_equal(leaf, tree[name])
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sharding.replicate(tree, "mesh")


def test_shard_particles_places_leaves_and_checks_divisibility():
    mesh = sharding.particle_mesh(jax.devices()[:1])
    tree = {"x": jnp.ones((4, 3)), "scale": jnp.float32(2.0)}
    placed = sharding.shard_particles(tree, mesh)
    assert placed["x"].sharding == sharding.particle_sharding(mesh)
    np.testing.assert_array_equal(placed["x"], tree["x"])
    assert int(sharding.global_argmax(jnp.array([0.0, 3.0, 3.0, 1.0]))) == 1  # first maximum
    gathered = sharding.gather_particles(tree["x"] * jnp.arange(4.0)[:, None], jnp.array([3, 3]))
    np.testing.assert_array_equal(gathered, np.full((2, 3), 3.0))
    with pytest.raises(ValueError, match="axis_name 'batch'"):
        sharding.particle_sharding(mesh, "batch")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sharding.shard_particles(tree, "mesh")
    if len(jax.devices()) > 1:  # pragma: no cover - only with several devices
        with pytest.raises(ValueError, match="divisible"):
            sharding.shard_particles(jnp.ones(len(jax.devices()) + 1), sharding.particle_mesh())
