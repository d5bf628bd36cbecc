"""Twisted SMC (TDS) and the guided DDPM step against exact answers.

Problem: the two-component mixture and quadratic tilt of ``test_smc_exact.py`` (``exact_twist.problem``),
on the linear path with its exact velocity; the base chain is ``its.refine.ddpm``'s. The exact twist
log E[exp(λ r(x_0)) | x_t] is closed form (``exact_twist.exact_log_twist``). Figures at the time of
writing: var(log Ẑ) over 64 seeds × 16 particles, 16 steps: FK steering over the DDPM chain 0.12, TDS
with the default twist λ r(x0_hat) 0.032, TDS with the exact twist 0.012 (ratio to FK 0.10; at 8 steps
the exact twist, exact for the continuous-time process, only reaches 0.35: the chain is too coarse).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.core.keys import split_per_particle
from itscale.core.sampler import StepContext, start_context
from itscale.refine.guided import GuidedState, guided, guided_move
from itscale.search.twisted import twisted_smc
from tests.search import exact_twist

jax.config.update("jax_enable_x64", True)

P = exact_twist.problem()
VELOCITY = P.gmm.velocity(P.path)


def _noise(key, *shape):
    return jax.random.normal(key, shape + (P.gmm.dim,))


def _zero_twist(x, t, x0_hat, lam):
    return jnp.zeros(x.shape[:1], x.dtype)


def test_counts_and_without_twist_or_resampling_is_the_ddpm_chain_weighted_by_the_reward():
    n, steps, key, x = 16, 8, jax.random.key(3), _noise(jax.random.key(4), 16)
    base = its.run(its.refine.ddpm(VELOCITY, P.path), key, x, num_steps=steps)
    plain = its.run(twisted_smc(VELOCITY, P.path, P.reward, num_particles=n, guidance="none",
                                log_twist=_zero_twist, ess_threshold=0.0), key, x, num_steps=steps)
    np.testing.assert_allclose(plain.output.particles, base.output, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(plain.output.log_weights, jax.nn.log_softmax(P.reward(base.output)), atol=1e-10)
    assert int(plain.stats.nfe) == n * steps and int(plain.stats.verifier_calls) == n   # only r(x_0)
    guided_run = its.run(twisted_smc(VELOCITY, P.path, P.reward, num_particles=n), key, x, num_steps=steps)
    # One model call (with its gradient) per particle at every state but x_0; one reward per evaluation.
    assert int(guided_run.stats.nfe) == n * steps
    assert int(guided_run.stats.verifier_calls) == n * (steps + 1)
    assert int(guided_run.stats.nonfinite) == 0


def test_proposal_correction_is_the_exact_gaussian_log_density_ratio():
    keys = jax.random.split(jax.random.key(0), 4)
    mean, grad = jax.random.normal(keys[0], (5, 3)), jax.random.normal(keys[1], (5, 3))
    std, scale = 0.7, 1.3
    x_s, correction = guided_move(keys[2], mean, std, grad, scale)
    shifted = mean + scale * std**2 * grad
    log_normal = lambda m: jnp.sum(jax.scipy.stats.norm.logpdf(x_s, m, std), axis=1)  # noqa: E731
    np.testing.assert_allclose(correction, log_normal(mean) - log_normal(shifted), rtol=1e-10)
    np.testing.assert_allclose(x_s, shifted + std * jax.random.normal(keys[2], mean.shape), rtol=1e-12)
    # A deterministic move (std = 0): no shift, no correction.
    x_0, none = guided_move(keys[3], mean, 0.0, grad, scale)
    np.testing.assert_array_equal(x_0, mean)
    np.testing.assert_array_equal(none, 0.0)


def test_guided_step_shifts_the_ddpm_mean_by_the_variance_times_the_reward_gradient():
    steps, step, key, x = 8, 3, jax.random.key(1), _noise(jax.random.key(2), 6)
    scale = 0.8
    sampler = guided(VELOCITY, P.path, P.reward)
    ctx = StepContext(jnp.asarray(step, jnp.int32), steps)
    moved, info = sampler.step(key, GuidedState(x), ctx, {"scale": scale})
    unguided, _ = sampler.step(key, GuidedState(x), ctx, {"scale": 0.0})
    # Independent gradient of scale * r(E[x0 | x_t]) through the exact denoiser, row by row.
    denoiser = P.gmm.denoiser(P.path)
    t, s = 1.0 - step / steps, 1.0 - (step + 1) / steps
    grad = jax.vmap(jax.grad(lambda xi: scale * P.reward(denoiser(xi[None], t))[0]))(x)
    variance = s**2 * (1.0 - ((1.0 - t) * s / (t * (1.0 - s))) ** 2)    # the DDPM posterior variance
    np.testing.assert_allclose(moved.x - unguided.x, variance * grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info["x0_hat"], denoiser(x, t), rtol=1e-12)
    assert int(info["invalid_rewards"]) == 0


def _log_normalizers(sampler, *, num_seeds, num_particles, num_steps):
    def one(key):
        return its.run(sampler, key, _noise(jax.random.fold_in(key, 1), num_particles), num_steps=num_steps).output

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), num_seeds)).log_normalizer)


def test_the_exact_twist_cuts_the_variance_of_log_z_against_fk_steering():
    n, steps, seeds = 16, 16, 64
    fk = _log_normalizers(its.search.smc(its.refine.ddpm(VELOCITY, P.path), P.reward, num_particles=n),
                          num_seeds=seeds, num_particles=n, num_steps=steps)
    exact = exact_twist.exact_log_twist(P.gmm, P.path, P.center, P.precision)
    tds = _log_normalizers(twisted_smc(VELOCITY, P.path, P.reward, num_particles=n, log_twist=exact),
                           num_seeds=seeds, num_particles=n, num_steps=steps)
    assert np.all(np.isfinite(fk)) and np.all(np.isfinite(tds))
    assert tds.var(ddof=1) < 0.5 * fk.var(ddof=1), (tds.var(ddof=1), fk.var(ddof=1))


def _component_mass(gmm, x, log_weights):
    """Σ_i W_i π_k(x_i), π_k the responsibilities of ``gmm``'s components: E[π_k] = w_k under ``gmm``."""
    log_joint = jnp.log(gmm.weights) + jax.vmap(
        lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(x, m, c), out_axes=1)(gmm.means, gmm.covs)
    return np.exp(log_weights) @ np.asarray(jax.nn.softmax(log_joint, axis=1))


def test_tds_is_closer_to_the_tilted_law_than_the_base_sampler():
    n, steps, key, x = 1024, 10, jax.random.key(5), _noise(jax.random.key(6), 1024)
    tilted, _ = P.gmm.tilted(P.center, P.precision)
    base = its.run(its.refine.ddpm(VELOCITY, P.path), key, x, num_steps=steps).output
    out = its.run(twisted_smc(VELOCITY, P.path, P.reward, num_particles=n), key, x, num_steps=steps).output
    uniform = jnp.full((n,), -np.log(n))
    target = np.asarray(tilted.mean())
    tds_error = np.abs(np.exp(out.log_weights) @ out.particles - target).max()
    base_error = np.abs(np.asarray(base.mean(axis=0)) - target).max()
    assert tds_error < 0.1 < base_error, (tds_error, base_error)
    tds_mass = _component_mass(tilted, out.particles, out.log_weights)
    base_mass = _component_mass(tilted, base, uniform)
    assert np.abs(tds_mass - tilted.weights).max() < 0.05 < np.abs(base_mass - tilted.weights).max()


def test_all_impossible_rewards_give_no_nan_and_are_flagged():
    n, steps, x = 16, 6, _noise(jax.random.key(7), 16)
    impossible = lambda x: jnp.full(x.shape[:1], -jnp.inf)  # noqa: E731
    result = its.run(twisted_smc(VELOCITY, P.path, impossible, num_particles=n), jax.random.key(0), x,
                     num_steps=steps)
    out = result.output
    assert float(out.log_normalizer) == -np.inf
    assert bool(out.info["all_impossible"]) and bool(out.info["ever_all_impossible"])
    assert int(out.invalid_rewards) == 0 and int(result.stats.nonfinite) == 0
    assert np.all(np.isfinite(out.particles)) and np.all(np.isfinite(out.log_weights))


def test_nan_rewards_are_counted_and_make_their_particles_impossible():
    n, steps, x = 32, 6, _noise(jax.random.key(8), 32)

    def reward(x):
        return jnp.where(x[:, 0] > 0.5, jnp.nan, P.reward(x))

    result = its.run(twisted_smc(VELOCITY, P.path, reward, num_particles=n, ess_threshold=0.0),
                     jax.random.key(0), x, num_steps=steps)
    out = result.output
    assert int(out.invalid_rewards) > 0 and int(result.stats.nonfinite) == 0
    flagged = np.asarray(out.particles[:, 0] > 0.5)
    assert flagged.any() and not flagged.all()
    assert np.all(np.exp(out.log_weights)[flagged] == 0.0)
    assert np.isfinite(out.log_weights[~flagged]).any() and np.isfinite(float(out.log_normalizer))


def test_queries_times_particles_equal_single_query_runs_with_the_matching_keys():
    """``its.particles(tds, Q)`` gives query q the keys split(k0, Q)[q] for init and
    split(fold_in(k1, i), Q)[q] for step i, where (k0, k1) = split(key) as in ``its.run``."""
    q, n, steps, key = 3, 8, 5, jax.random.key(11)
    tds = twisted_smc(VELOCITY, P.path, P.reward, num_particles=n, ess_threshold=1.0)
    x = _noise(jax.random.key(12), q, n)
    batched = its.run(its.particles(tds, q), key, x, num_steps=steps)
    assert int(batched.stats.nfe) == q * n * steps
    init_key, loop_key = jax.random.split(key)

    @jax.jit
    def single(query, x_q):
        state = tds.init(split_per_particle(init_key, q)[query], x_q, tds.params, start_context(steps))

        def body(state, i):
            step_key = split_per_particle(jax.random.fold_in(loop_key, i), q)[query]
            return tds.step(step_key, state, StepContext(i, steps), tds.params)[0], None

        return tds.finalize(jax.lax.scan(body, state, jnp.arange(steps, dtype=jnp.int32))[0])

    for query in range(q):
        alone = single(query, x[query])
        assert int(alone.info["num_resamples"]) == steps - 1
        for got, want in zip(jax.tree.leaves(jax.tree.map(lambda a: a[query], batched.output)),
                             jax.tree.leaves(alone)):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_lam_and_guidance_are_traced_and_validated():
    n, steps, x = 8, 4, _noise(jax.random.key(9), 8)
    traces = []

    def reward(x):
        traces.append(1)
        return P.reward(x)

    tds = twisted_smc(VELOCITY, P.path, reward, num_particles=n)
    first = its.run(tds, jax.random.key(0), x, num_steps=steps).output
    count = len(traces)
    second = its.run(tds, jax.random.key(0), x, num_steps=steps,
                     params={"lam": 0.5, "ess_threshold": 0.5, "guidance_scale": 1.0}).output
    assert len(traces) == count
    assert not np.allclose(first.particles, second.particles)
    with pytest.raises(ValueError, match="ess_threshold"):
        its.run(tds, jax.random.key(0), x, num_steps=steps,
                params={"lam": 1.0, "ess_threshold": 1.5, "guidance_scale": 1.0})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="guidance"):
        twisted_smc(VELOCITY, P.path, P.reward, num_particles=4, guidance="dps")
    with pytest.raises(ValueError, match="num_particles"):
        twisted_smc(VELOCITY, P.path, P.reward, num_particles=0)
    with pytest.raises(TypeError, match="log_twist"):
        twisted_smc(VELOCITY, P.path, P.reward, num_particles=4, log_twist=1.0)
    with pytest.raises(ValueError, match="num_particles=4"):
        its.run(twisted_smc(VELOCITY, P.path, P.reward, num_particles=4), jax.random.key(0),
                _noise(jax.random.key(0), 5), num_steps=3)
