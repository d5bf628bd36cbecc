"""tAB-DEIS (``deis_2``, ``deis_3``): its quadrature weights against adaptive quadrature in the paper's
variable t, the corrected start written out step by step, and every path in float32 and float64.

The measured orders are checked with the other exponential integrators in ``test_ode_order_exponential.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import itscale as its
from itscale.paths import conversions
from itscale.refine.grid_times import default_t_min
from itscale.refine.solvers.deis import d_rho_quadrature, deis, lagrange_basis, restart_weight
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)


@functools.cache
def rho_dot(path):
    """rho' = d(sigma / alpha) / dt = (sigma_dot alpha - sigma alpha_dot) / alpha^2, jitted once per path."""
    return jax.jit(lambda t: (path.sigma_dot(t) * path.alpha(t) - path.sigma(t) * path.alpha_dot(t))
                   / path.alpha(t) ** 2)


def quad_in_t(path, f, t, s):
    """int_t^s f(tau) rho'(tau) d tau by adaptive quadrature (QUADPACK), the paper's formulation."""
    return integrate.quad(lambda tau: f(tau) * float(rho_dot(path)(tau)), t, s, epsabs=1e-14, epsrel=1e-12,
                          limit=200)[0]


@pytest.mark.parametrize("path, grid", [
    (its.paths.linear(), its.paths.Grid("uniform", t_min=0.0, t_max=1.0)),  # last step ends at rho = 0
    (its.paths.vp(), its.paths.Grid("log_snr", t_min=1e-3, t_max=1.0)),
])
def test_quadrature_matches_adaptive_quadrature_in_t(path, grid):
    """C_ij / alpha_{i+1} = int ell_j d rho for the three-point basis on every step from the third on,
    and the start correction R / alpha_1 on the first step (where alpha(t_0) > 0)."""
    times = np.asarray(grid.times(6, path, dtype=jnp.float64))
    t, s = jnp.asarray(times[2:-1]), jnp.asarray(times[3:])
    tau, weights = d_rho_quadrature(path, t, s)
    nodes = (times[2:-1], times[1:-2], times[:-3])
    for j in range(3):
        ours = np.asarray(jnp.sum(weights * lagrange_basis(tau, tuple(map(jnp.asarray, nodes)), j), axis=1))
        exact = [quad_in_t(path, lambda x: np.prod([(x - n[i]) / (nodes[j][i] - n[i])
                                                    for k, n in enumerate(nodes) if k != j]),
                           times[2 + i], times[3 + i]) for i in range(len(t))]
        np.testing.assert_allclose(ours, exact, rtol=1e-9, atol=1e-12, err_msg=f"basis {j}")
    r = float(restart_weight(path, jnp.asarray(times[:1]), jnp.asarray(times[1:2]))[0])
    if path.alpha(times[0]) > 0:
        exact = quad_in_t(path, lambda x: (x - times[0]) / (times[1] - times[0]), times[0], times[1])
        np.testing.assert_allclose(r / float(path.alpha(times[1])), exact, rtol=1e-9)
    else:
        assert r == 0.0


def test_corrected_start_is_the_trapezoidal_resolve_of_the_first_step():
    """Two deis_3 steps on the VP path equal the update written out: DDIM to x~_1, x_1 = x~_1 + R (eps~_1 -
    eps_0), then the two-point step from x_1 with eps~_1 and eps_0; deis_2 is the same without R."""
    path = its.paths.vp()
    velocity = ref.mixture().velocity(path)
    x = ref.noise(batch=4)
    times = its.paths.Grid("log_snr").times(2, path, dtype=jnp.float64)
    samplers = {s: its.refine.ode(velocity, s, grid=times, path=path) for s in ("deis_2", "deis_3")}
    outputs = jax.jit(lambda x: {s: its.run(smp, jax.random.key(0), x, num_steps=2).output
                                 for s, smp in samplers.items()})(x)
    alpha, sigma = path.alpha(times), path.sigma(times)

    def predictions(x, t):
        u = velocity(x, t)
        return conversions.x0_from_velocity(path, u, x, t), conversions.eps_from_velocity(path, u, x, t)

    x0_0, eps_0 = predictions(x, times[0])
    x1 = alpha[1] * x0_0 + sigma[1] * eps_0
    _, eps_1 = predictions(x1, times[1])
    tau, weights = d_rho_quadrature(path, times[1:2], times[2:])
    c = float(alpha[2] * jnp.sum(weights * lagrange_basis(tau, (times[1:2], times[:1]), 1)))
    r = float(restart_weight(path, times[:1], times[1:2])[0])
    assert abs(r) > 1e-3
    for solver, start in (("deis_2", 0.0), ("deis_3", r)):
        x1_corrected = x1 + start * (eps_1 - eps_0)
        x0_1 = (x1_corrected - sigma[1] * eps_1) / alpha[1]
        expected = alpha[2] * x0_1 + sigma[2] * eps_1 + c * (eps_0 - eps_1)
        np.testing.assert_allclose(outputs[solver], expected, rtol=1e-10, atol=1e-12, err_msg=solver)


def gaussian_flow(path, mean, cov, x, t, s):
    """The exact flow map of a Gaussian N(mean, cov): x_tau = alpha_tau mean + A_tau z with
    A_tau = (alpha_tau^2 cov + sigma_tau^2 I)^(1/2) (all A_tau commute, so z is constant along the flow)."""
    values, vectors = jnp.linalg.eigh(cov)
    scale = [jnp.sqrt(path.alpha(u) ** 2 * values + path.sigma(u) ** 2) for u in (t, s)]
    z = (x - path.alpha(t) * mean) @ vectors / scale[0]
    return path.alpha(s) * mean + (z * scale[1]) @ vectors.T


def test_every_path_reaches_the_exact_flow():
    """deis_3 on every path, on its default grid, for a Gaussian: 64 steps land within 1e-3 (RMS) of the
    exact flow map (measured 2.6e-7 to 3.6e-4; deis_2 2e-5 to 2.6e-3, DPM-Solver++(2M) 1.3e-5 to 4.7e-3),
    and float32 agrees with float64 to float32 precision (vp, where the corrected start is active): the
    conversions give x0 / eps on each path and the weights assume no dtype."""
    mean, cov = jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.2], [0.2, 0.3]])
    gaussian = its.models.GaussianMixture(jnp.array([1.0]), mean[None], cov[None])
    x = ref.noise(batch=8)
    paths = {name: its.paths.get(name) for name in its.paths.registry.FACTORIES}
    kinds = {name: "log_snr" if name == "vp" else "uniform" for name in paths}
    # the grids by kind name: t: 1 -> 0 on linear, ve and edm, 1 -> 1e-3 on vp and vp_cosine
    grids = {name: its.paths.Grid(kinds[name], t_min=default_t_min(kinds[name], path))
             for name, path in paths.items()}
    assert [g.t_min for g in grids.values()] == [0.0, 1e-3, 1e-3, 0.0, 0.0]
    samplers = {name: its.refine.ode(gaussian.velocity(path), "deis_3", grid=kinds[name], path=path)
                for name, path in paths.items()}

    @jax.jit
    def run_all(x):
        outputs = {name: its.run(s, jax.random.key(0), x, num_steps=64).output for name, s in samplers.items()}
        return outputs, its.run(samplers["vp"], jax.random.key(0), x.astype(jnp.float32), num_steps=64).output

    outputs, vp32 = run_all(x)
    for name, path in paths.items():
        exact = gaussian_flow(path, mean, cov, x, grids[name].t_max, grids[name].t_min)
        rms = float(jnp.sqrt(jnp.mean((outputs[name] - exact) ** 2)))
        assert rms < 1e-3, (name, rms)
    assert vp32.dtype == jnp.float32
    np.testing.assert_allclose(vp32, outputs["vp"], rtol=1e-5, atol=1e-5)


def test_only_orders_2_and_3():
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        deis(4)
