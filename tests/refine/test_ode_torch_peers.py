"""The PyTorch peers of the benchmarks compute what ``its.refine.ode`` computes (same MLP weights, same
update rules), so the bench compares timings of the same computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import itscale as its
from itscale.models.mlp import MLP, as_fn

torch = pytest.importorskip("torch")
from experiments.bench import torch_peers  # noqa: E402  (needs torch)


def test_every_solver_matches_its_torch_peer():
    model = MLP(2, width=32, rngs=nnx.Rngs(0))
    velocity, torch_velocity = as_fn(model), torch_peers.TorchMLP.from_nnx(model)
    path, grid = its.paths.linear(), its.paths.Grid("uniform")
    x = jax.random.normal(jax.random.key(0), (16, 2), jnp.float32)
    samplers = {s: its.refine.ode(velocity, s, grid=grid, path=path) for s in torch_peers.SOLVERS}
    assert set(samplers) == set(its.refine.SOLVERS)
    outputs = jax.jit(lambda x: {s: its.run(smp, jax.random.key(0), x, num_steps=10).output
                                 for s, smp in samplers.items()})(x)
    times = np.asarray(grid.times(10, dtype=jnp.float32))
    for solver, output in outputs.items():
        peer = torch_peers.sample(solver, torch_velocity, torch.from_numpy(np.array(x)), times, path)
        np.testing.assert_allclose(output, peer.numpy(), rtol=1e-5, atol=1e-5, err_msg=solver)
