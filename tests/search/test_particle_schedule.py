"""Particle-count schedules for SMC against exact answers.

A one-phase schedule is ``smc`` bit for bit; a decaying schedule estimates log Z = log E_p[exp(r)] of a
mild quadratic tilt of a 2-D Gaussian mixture (exact: ``gmm.tilted``) without bias for Z and gives the
tilted mean; NFE are Σ N_k · steps_k · nfe_per_step exactly. At equal NFE (1344 = 12 steps × 112
particles = 4 × (192 + 96 + 48)), over an exact ancestral base sampler, figures at the time of writing
(400 seeds): constant log Ẑ RMSE 0.053 nats, tilted-mean RMSE 0.142; decaying 0.068 and 0.185 (the
decaying schedule ends with 48 particles; with exact base moves the extra early particles buy little).
The tests assert only the robust part: both are accurate, and neither is more than twice the other's error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.search.particle_schedule import (check_schedule, plan_particle_schedule, schedule_nfe,
                                              scheduled_smc)
from itscale.search.split import plan_width
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

NUM_SEEDS, NUM_STEPS = 40, 12
CONSTANT, DECAYING = ((NUM_STEPS, 112),), ((4, 192), (4, 96), (4, 48))
GMM = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                 jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
CENTER, PRECISION = jnp.array([-0.5, 0.5]), 0.5 * jnp.eye(2)      # a mild tilt
REWARD = gmm_samplers.quadratic_reward(CENTER, PRECISION)
BASE = gmm_samplers.exact_ancestral(GMM)


def _runs(steered, num_particles):
    """Outputs and stats of NUM_SEEDS runs on the same keys and noise (vmapped: one compilation)."""

    def one(key):
        noise = jax.random.normal(jax.random.fold_in(key, 1), (num_particles, GMM.dim))
        result = its.run(steered, key, noise, num_steps=NUM_STEPS)
        return result.output, result.stats

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), NUM_SEEDS))


@functools.cache
def _smc_runs():
    return _runs(its.search.smc(BASE, REWARD, num_particles=112, ess_threshold=0.8), 112)


@functools.cache
def _scheduled_runs(schedule):
    return _runs(scheduled_smc(BASE, REWARD, schedule=schedule, ess_threshold=0.8), schedule[0][1])


def _errors(out):
    """Per seed: log Ẑ − log Z and the weighted particles' mean − the tilted mean."""
    tilted, log_z = GMM.tilted(CENTER, PRECISION)
    means = np.einsum("sn,sni->si", np.exp(out.log_weights), out.particles)
    return np.asarray(out.log_normalizer) - float(log_z), means - np.asarray(tilted.mean())


def _rmse(errors):
    """Root mean square over seeds of the error's norm."""
    return float(np.sqrt(np.mean(np.sum(np.reshape(errors, (NUM_SEEDS, -1)) ** 2, axis=1))))


def test_a_one_phase_schedule_is_smc_bit_for_bit():
    reference, ref_stats = _smc_runs()
    out, stats = _scheduled_runs(((5, 112), (7, 112)))     # equal counts merge into one phase
    assert float(np.mean(reference.info["num_resamples"])) > 0.5    # resampling is exercised
    for name in ("particles", "log_weights", "log_normalizer", "scores"):
        np.testing.assert_array_equal(getattr(out, name), getattr(reference, name), err_msg=name)
    np.testing.assert_array_equal(out.info["num_resamples"], reference.info["num_resamples"])
    np.testing.assert_array_equal(stats.nfe, ref_stats.nfe)
    np.testing.assert_array_equal(stats.verifier_calls, ref_stats.verifier_calls)


def test_a_decaying_schedule_estimates_log_z_and_the_tilted_mean():
    out, stats = _scheduled_runs(DECAYING)
    assert out.particles.shape == (NUM_SEEDS, 48, 2)
    np.testing.assert_array_equal(out.info["particles_per_phase"][0], [192, 96, 48])
    assert not np.any(out.info["all_impossible"]) and int(np.sum(out.invalid_rewards)) == 0
    assert int(np.sum(stats.nonfinite)) == 0
    log_z_error, mean_error = _errors(out)
    assert np.max(np.abs(log_z_error)) < 0.3                 # every run within 0.3 nats of log Z
    se = log_z_error.std(ddof=1) / np.sqrt(NUM_SEEDS)
    assert abs(log_z_error.mean()) < 3.0 * se + 0.01, (log_z_error.mean(), se)
    ratio = np.exp(log_z_error)                              # Ẑ / Z is unbiased for 1
    assert abs(ratio.mean() - 1.0) < 3.0 * ratio.std(ddof=1) / np.sqrt(NUM_SEEDS)
    mean_se = mean_error.std(axis=0, ddof=1) / np.sqrt(NUM_SEEDS)
    np.testing.assert_array_less(np.abs(mean_error.mean(axis=0)), 3.5 * mean_se)
    assert np.max(np.linalg.norm(mean_error, axis=-1)) < 0.6


def test_at_equal_nfe_a_decaying_schedule_is_within_twice_the_constant_error():
    assert schedule_nfe(CONSTANT) == schedule_nfe(DECAYING) == 1344
    constant, constant_stats = _smc_runs()
    decaying, decaying_stats = _scheduled_runs(DECAYING)
    np.testing.assert_array_equal(constant_stats.nfe, decaying_stats.nfe)
    (z_const, m_const), (z_decay, m_decay) = _errors(constant), _errors(decaying)
    assert 0.5 < _rmse(z_decay) / _rmse(z_const) < 2.0, (_rmse(z_decay), _rmse(z_const))
    assert 0.5 < _rmse(m_decay) / _rmse(m_const) < 2.0, (_rmse(m_decay), _rmse(m_const))


def test_nfe_are_the_schedules_exactly():
    path = its.paths.linear()
    base = its.refine.ode(GMM.velocity(path), solver="heun")             # 2 NFE per step
    steered = scheduled_smc(base, REWARD, nfe_budget=600, num_steps=6, num_phases=2, decay=0.5)
    schedule = plan_particle_schedule(600, num_steps=6, nfe_per_step=2, num_phases=2, decay=0.5)
    cost = sum(steps * n for steps, n in schedule)
    result = its.run(steered, jax.random.key(3), jax.random.normal(jax.random.key(4), (schedule[0][1], 2)),
                     num_steps=6)
    assert len(schedule) == 2 and int(result.stats.nfe) == 2 * cost <= 600
    assert int(result.stats.verifier_calls) == cost
    split = result.output.split
    assert (int(split.nfe_budget), int(split.nfe_bound), int(split.width)) == (600, 2 * cost, schedule[-1][1])
    np.testing.assert_array_equal(result.output.info["steps_per_phase"], [s for s, _ in schedule])
    assert result.output.particles.shape == (schedule[-1][1], 2)


def test_all_impossible_rewards_give_no_nan_and_are_flagged():
    schedule = ((2, 16), (2, 8))
    steered = scheduled_smc(gmm_samplers.euler_maruyama(GMM), lambda x: jnp.full(x.shape[:1], -jnp.inf),
                            schedule=schedule)
    result = its.run(steered, jax.random.key(5), jax.random.normal(jax.random.key(6), (16, 2)), num_steps=4)
    out = result.output
    assert bool(out.info["all_impossible"]) and bool(out.info["ever_all_impossible"]) and not bool(out.valid)
    assert float(out.log_normalizer) == -np.inf and int(out.invalid_rewards) == 0
    assert int(result.stats.nonfinite) == 0 and int(result.stats.nfe) == 2 * 16 + 2 * 8
    assert np.all(np.isfinite(out.particles)) and not np.any(np.isnan(out.log_weights))


def test_plan_fits_the_budget_with_the_largest_first_phase():
    cases = [(1000, 10, 1, 0.5, None), (5000, 20, 2, 0.7, 5), (37, 7, 1, 0.3, 7)]
    for budget, steps, per, decay, phases in cases:
        schedule = plan_particle_schedule(budget, num_steps=steps, nfe_per_step=per, decay=decay,
                                          num_phases=phases)
        counts = [n for _, n in schedule]
        assert sum(s for s, _ in schedule) == steps and counts == sorted(counts, reverse=True)
        assert schedule_nfe(schedule, per) <= budget
        bigger = plan_particle_schedule(10 * budget, num_steps=steps, nfe_per_step=per, decay=decay,
                                        num_phases=phases)
        assert counts[0] < bigger[0][1]
    # N_1 is the largest that fits: one more particle at the start overflows the budget.
    lengths = [3, 3, 2, 2]
    schedule = plan_particle_schedule(1000, num_steps=10)
    more = check_schedule((s, max(1, int((schedule[0][1] + 1) * 0.5 ** k))) for k, s in enumerate(lengths))
    assert schedule_nfe(more) > 1000 >= schedule_nfe(schedule)
    # decay = 1 is the constant width of plan_width.
    assert plan_particle_schedule(1000, num_steps=10, decay=1.0) == ((10, plan_width(1000, num_steps=10,
                                                                                     nfe_per_step=1).width),)


def test_budget_and_schedule_errors():
    with pytest.raises(ValueError, match=r"nfe_budget.*>= 20"):
        plan_particle_schedule(19, num_steps=10, nfe_per_step=2)
    with pytest.raises(ValueError, match=r"nfe_budget.*>= 20"):
        scheduled_smc(BASE, REWARD, nfe_budget=19, num_steps=10, nfe_per_step=2)
    with pytest.raises(ValueError, match=r"nfe_budget=100 is too small.*>= 120"):
        scheduled_smc(BASE, REWARD, schedule=((2, 40), (2, 20)), nfe_budget=100, nfe_per_step=1)
    with pytest.raises(ValueError, match="num_steps"):
        scheduled_smc(BASE, REWARD, nfe_budget=100)
    with pytest.raises(ValueError, match="NFE per step"):
        scheduled_smc(BASE, REWARD, nfe_budget=100, num_steps=5)          # undeclared cost, no nfe_per_step
    with pytest.raises(ValueError, match="or an nfe_budget"):
        scheduled_smc(BASE, REWARD)
    with pytest.raises(ValueError, match="must not increase"):
        scheduled_smc(BASE, REWARD, schedule=((2, 8), (2, 16)))
    with pytest.raises(ValueError, match="num_steps=5 differs"):
        scheduled_smc(BASE, REWARD, schedule=((2, 8), (2, 4)), num_steps=5)
    with pytest.raises(ValueError, match="decay"):
        plan_particle_schedule(100, num_steps=5, decay=0.0)
    with pytest.raises(ValueError, match="num_phases"):
        plan_particle_schedule(100, num_steps=5, num_phases=6)
    with pytest.raises((TypeError, ValueError), match="schedule"):
        check_schedule(((2, 8.5),))
    steered = scheduled_smc(BASE, REWARD, schedule=((2, 8), (2, 4)))
    with pytest.raises(ValueError, match="num_steps=4"):
        its.run(steered, jax.random.key(0), jnp.zeros((8, 2)), num_steps=5)
    with pytest.raises(ValueError, match="first phase's 8 particles"):
        its.run(steered, jax.random.key(0), jnp.zeros((4, 2)), num_steps=4)
