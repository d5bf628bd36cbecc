"""Bad input to the refine samplers fails at trace time with a message naming the argument and what is
accepted (before: TracerArrayConversionError from deep inside a step)."""

import jax
import jax.numpy as jnp
import pytest

import itscale as its

LINEAR = its.paths.linear()
X = jnp.ones((4, 2), jnp.float32)


def identity(x, t):
    return x


SAMPLERS = {
    "ode": lambda fn: its.refine.ode(fn, "heun"),
    "ddim": lambda fn: its.refine.ode(fn, "ddim", path=LINEAR),
    "sde": lambda fn: its.refine.sde(fn, LINEAR),
    "restart": lambda fn: its.refine.restart(fn, LINEAR, restarts=1, restart_steps=1),
    "langevin": lambda fn: its.refine.langevin(fn, LINEAR),
    "ddpm": lambda fn: its.refine.ddpm(fn, LINEAR),
}
MODEL_ARGUMENT = {"ode": "velocity_fn", "ddim": "velocity_fn"}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("x", [{"a": X, "b": X}, (X, X), [X]], ids=["dict", "tuple", "list"])
def test_a_pytree_x_is_refused_by_name(name, x):
    with pytest.raises(TypeError, match=r"^x must be one floating array of shape \(batch, \.\.\.\)"):
        its.run(SAMPLERS[name](identity), jax.random.key(0), x, num_steps=3)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("output", [lambda x: (x, x), lambda x: {"u": x}, lambda x: None],
                         ids=["tuple", "dict", "None"])
def test_a_model_returning_a_non_array_is_refused_by_name(name, output):
    argument = MODEL_ARGUMENT.get(name, "model_fn")
    with pytest.raises(TypeError, match=rf"^{argument} must return one array of the state's shape \(4, 2\)"):
        its.run(SAMPLERS[name](lambda x, t: output(x)), jax.random.key(0), X, num_steps=3)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_an_integer_model_output_asks_for_floating_values_of_the_state_dtype(name):
    argument = MODEL_ARGUMENT.get(name, "model_fn")
    sampler = SAMPLERS[name](lambda x, t: x.astype(jnp.int32))
    message = rf"^{argument} returned dtype int32, but the state has dtype float32"
    with pytest.raises(TypeError, match=message) as error:
        its.run(sampler, jax.random.key(0), X, num_steps=3)
    assert "must return floating values of the state's dtype float32" in str(error.value)
    assert "build the state in" not in str(error.value)
