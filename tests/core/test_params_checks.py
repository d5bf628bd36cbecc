"""Hyper-parameters reach the loop as what the user meant, or an error names them before any compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from tests.core.helpers import euler
from tests.search.gmm_samplers import PATH, euler_maruyama, quadratic_reward


def _gmm():
    return its.models.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                                      jnp.stack([0.3 * jnp.eye(2), 0.5 * jnp.eye(2)]))


def _scaled(default) -> its.Sampler:
    """A user sampler x -> scale * x whose default ``scale`` is the literal ``default``."""
    return its.Sampler(lambda key, x, params: x, lambda key, x, ctx, params: (params["scale"] * x, {}),
                       lambda x: x, {"scale": default})


@pytest.mark.parametrize("default", [1, 2.0, np.float32(1.0)])
def test_a_real_parameter_stays_floating_whatever_literal_the_default_is(default):
    out = its.run(_scaled(default), jax.random.key(0), jnp.ones((2, 3)), num_steps=1,
                  params={"scale": 0.5}).output
    np.testing.assert_allclose(out, 0.5)


def test_smc_with_integer_lam_default_uses_the_given_fractional_lam():
    gmm = _gmm()
    center, precision = jnp.array([-1.5, 0.0]), 2.0 * jnp.eye(2)
    steered = its.search.smc(euler_maruyama(gmm), quadratic_reward(center, precision), num_particles=2048,
                             lam=1, ess_threshold=1)
    x = jax.random.normal(jax.random.key(1), (2048, 2))
    log_z = its.run(steered, jax.random.key(2), x, num_steps=20,
                    params=steered.params._replace(lam=0.5, ess_threshold=0.5)).output.log_normalizer
    exact = gmm.tilted(center, 0.5 * precision)[1]        # lam = 0.5 halves the precision of the tilt
    assert abs(float(log_z) - float(exact)) < 0.1, (float(log_z), float(exact))


def test_particle_filter_with_integer_tau_default_keeps_fractional_tau():
    lm = its.models.MarkovLM(jnp.zeros(4), jax.random.normal(jax.random.key(0), (4, 4)))
    prompts = jnp.zeros((2, 1), jnp.int32)

    def make(tau):
        return its.tokens.particle_filter(lm.logits_fn, lambda g: jax.nn.sigmoid(g.log_probs.sum(-1)),
                                          nfe_budget=40, num_steps=4, step_length=1, tau=tau)

    swept = make(1)
    got = its.run(swept, jax.random.key(3), prompts, num_steps=4, params=swept.params._replace(tau=0.25))
    want = its.run(make(0.25), jax.random.key(3), prompts, num_steps=4)
    np.testing.assert_array_equal(got.output.particles.tokens, want.output.particles.tokens)
    np.testing.assert_allclose(got.output.log_normalizer, want.output.log_normalizer, rtol=1e-6)


@pytest.mark.parametrize("value, error, match", [
    ("a", TypeError, r"params\['scale'\] must be a number"),
    (1e40, ValueError, r"params\['scale'\] = .* overflows float32"),
    (1 + 2j, TypeError, r"params\['scale'\] must be real"),
    (jnp.ones(()) + 0.5j, TypeError, None),
])
def test_unrepresentable_values_name_the_parameter(value, error, match):
    with jax.enable_x64(False), pytest.raises(error, match=match):
        its.run(_scaled(1.0), jax.random.key(0), jnp.ones((2, 3)), num_steps=1, params={"scale": value})


def test_an_integer_array_default_declares_an_integer_parameter():
    sampler = _scaled(np.int32(2))
    out = its.run(sampler, jax.random.key(0), jnp.ones((2,), jnp.int32), num_steps=1, params={"scale": 3}).output
    assert out.dtype == jnp.int32 and int(out[0]) == 3
    with pytest.raises(ValueError, match=r"params\['scale'\] must hold int32"):
        its.run(sampler, jax.random.key(0), jnp.ones((2,), jnp.int32), num_steps=1, params={"scale": 0.5})
    with pytest.raises(TypeError, match=r"params\['scale'\] must be int32"):
        jax.jit(lambda s: its.run(sampler, jax.random.key(0), jnp.ones((2,), jnp.int32), num_steps=1,
                                  params={"scale": s}).output)(0.5)


def test_params_for_a_sampler_without_params_are_an_error():
    sampler = its.refine.ode(_gmm().velocity(PATH))
    with pytest.raises(ValueError, match="takes no hyper-parameters"):
        its.run(sampler, jax.random.key(0), jnp.zeros((2, 2)), num_steps=2, params={"eta": 1.0})
    its.run(sampler, jax.random.key(0), jnp.zeros((2, 2)), num_steps=2, params={})


def _rollout(**options):
    lm = its.models.MarkovLM(jnp.zeros(5), jnp.zeros((5, 5)))
    return its.tokens.rollout(lm.logits_fn, **options)


@pytest.mark.parametrize("make, params, match", [
    (lambda: _rollout(), {"temperature": -1.0}, "temperature"),
    (lambda: _rollout(top_p=0.9), {"temperature": 1.0, "top_p": 5.0}, "top_p"),
    (lambda: _rollout(min_p=0.1), {"temperature": 1.0, "min_p": -0.5}, "min_p"),
    (lambda: its.search.smc(euler_maruyama(_gmm()), lambda x: x[:, 0], num_particles=2),
     its.search.SMCParams(None, 1.0, 5.0), "ess_threshold"),
    (lambda: its.search.smc(euler_maruyama(_gmm()), lambda x: x[:, 0], num_particles=2),
     its.search.SMCParams(None, float("nan"), 0.5), "lam"),
    (lambda: its.refine.ode(_gmm().velocity(PATH), solver="ddim", path=PATH), {"eta": -1.0}, "eta"),
    (lambda: its.refine.sde(_gmm().velocity(PATH), PATH), {"g_scale": -1.0}, "g_scale"),
    (lambda: its.search.smc(its.refine.sde(_gmm().velocity(PATH), PATH), lambda x: x[:, 0], num_particles=2),
     its.search.SMCParams({"g_scale": -2.0}, 1.0, 0.5), "g_scale"),
])
def test_out_of_range_params_given_to_run_are_rejected(make, params, match):
    sampler = make()
    x = jnp.zeros((2, 1), jnp.int32) if "temperature" in str(sampler.params) else jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=match):
        its.run(sampler, jax.random.key(0), x, num_steps=2, params=params)


def test_traced_params_skip_value_checks_but_keep_dtypes():
    sampler = _rollout()
    run = jax.jit(lambda t: its.run(sampler, jax.random.key(0), jnp.zeros((2, 1), jnp.int32), num_steps=2,
                                    params={"temperature": t}).output.tokens)
    assert run(0.5).shape == (2, 3)


def test_num_steps_beyond_int32_fails_at_once():
    with pytest.raises(ValueError, match="num_steps must be at most"):
        its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=2 ** 31)


@pytest.mark.parametrize("brackets, low_ok, high_ok", [("[]", True, True), ("(]", False, True),
                                                       ("[)", True, False), ("()", False, False)])
def test_param_ranges_include_or_exclude_each_bound_as_declared(brackets, low_ok, high_ok):
    check = its.core.checks.param_ranges(a=(0.0, 1.0, brackets))
    for value, ok in ((0.0, low_ok), (1.0, high_ok), (0.5, True), (-0.1, False), (np.nan, False)):
        if ok:
            check(None, {"a": value})
        else:
            with pytest.raises(ValueError, match=rf"params\['a'\] must lie in \{brackets[0]}0.0, 1.0\{brackets[1]}"):
                check(None, {"a": value})
    with pytest.raises(ValueError, match="brackets"):
        its.core.checks.param_ranges(a=(0.0, 1.0, "<>"))


def test_a_path_argument_that_is_not_a_path_is_named_with_its_context():
    path = its.paths.linear()
    assert its.core.checks.path("path", path) is path
    assert its.core.checks.path("path", None, optional=True) is None
    with pytest.raises(TypeError, match=r"target must be an itscale.paths.Path \(e.g. .*\) for grid 'x', got 'vp'"):
        its.core.checks.path("target", "vp", context=" for grid 'x'")
    with pytest.raises(TypeError, match="or None"):
        its.core.checks.path("path", 1.0, optional=True)
    for build in (lambda: its.refine.ode(lambda x, t: x, "euler", path="linear"),
                  lambda: its.refine.consistency(lambda x, t: x, "linear"),
                  lambda: its.models.GaussianMixture(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.eye(2)[None]).velocity("linear")):
        with pytest.raises(TypeError, match="path must be an itscale.paths.Path"):
            build()
