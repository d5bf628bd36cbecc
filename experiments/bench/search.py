"""Search benchmarks: the cost of SMC / FK steering over plain batched sampling at equal NFE.

* SMC vs plain: ``its.search.smc`` over ``its.refine.sde`` (Euler–Maruyama, 50 steps) resampling after
  every step (``ess_threshold=1``), N particles, vs ``its.run`` of the same sampler on the same N
  particles (same NFE, checked). Model: the 2 -> 256 -> 256 -> 2 MLP velocity of the core bench
  (target ≤ 1.15×), and the exact Gaussian-mixture velocity, a model that costs almost nothing (about
  20 µs per step at N = 256 on CPU): there the ratio shows the SMC bookkeeping itself (reward, weights,
  ESS, systematic resampling, the gather), reported per step in the note, with no ratio target:
  generic FK steering on blackjax also costs 1.5-2x plain sampling there (next row).
* vs blackjax (optional, when ``blackjax`` is installed): the same FK steering written as a
  ``lax.scan`` over ``blackjax.smc.base.step`` (resample every step, systematic, the same SDE step and
  difference potential) against ``its.search.smc``, for both models; target parity (≤ 1.05×) on the
  MLP. On the Gaussian mixture the row compares bookkeeping with bookkeeping, which ours does more of
  (the ESS test and its branch, −inf-safe potentials, invalid-reward counts, log Ẑ at every step): a
  few µs per step, shown without a target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import itscale as its
from experiments.bench.core import mlp_velocity
from experiments.bench.timing import time_interleaved
from itscale.core.sampler import StepContext

PATH = its.paths.linear()
STEPS = 50


def _reward(x):
    """A quadratic reward centred off the data mean."""
    return -0.5 * jnp.sum((x - jnp.array([1.0, -0.5], x.dtype)) ** 2, axis=-1)


def _models():
    gmm = its.models.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                                     jnp.tile(0.3 * jnp.eye(2), (2, 1, 1)))
    return {"MLP 2-256-256-2": mlp_velocity(), "exact GMM velocity": gmm.velocity(PATH)}


def _blackjax_fk(base: its.Sampler, num_particles: int):
    """FK steering (difference potential on x0_hat, resampling every step) on blackjax's generic SMC step."""
    from blackjax.smc import base as bj_base
    from blackjax.smc import resampling as bj_resampling

    from itscale.refine.sde import SDEState

    @jax.jit
    def run(key, x):
        def update(keys, particles, step):
            x, previous_reward = particles
            state, info = base.step(keys[0], SDEState(x), StepContext(step, STEPS), base.params)
            last = step == STEPS - 1
            reward = _reward(jnp.where(last, state.x, info["x0_hat"]))
            return (state.x, reward), reward - previous_reward

        def body(carry, step):
            state, key = carry
            key, sub = jax.random.split(key)
            increments = {}

            def update_fn(keys, particles, params):
                particles, increment = update(keys, particles, step)
                increments["value"] = increment
                return particles, None

            state, info = bj_base.step(sub, state, update_fn, lambda _: increments["value"],
                                       bj_resampling.systematic)
            return (state, key), info.log_likelihood_increment

        state = bj_base.init((x, jnp.zeros(num_particles, x.dtype)), None)
        (state, _), log_z = lax.scan(body, (state, key), jnp.arange(STEPS))
        return state.particles[0], state.weights, jnp.sum(log_z)

    return run


def rows(quick: bool = False) -> list[dict]:
    out = []
    repeats = 5 if quick else 15
    sizes = (256,) if quick else (256, 4096)
    for model_name, velocity in _models().items():
        base = its.refine.sde(velocity, PATH)
        for n in sizes:
            steered = its.search.smc(base, _reward, num_particles=n, ess_threshold=1.0)
            x, key = jax.random.normal(jax.random.key(1), (n, 2)), jax.random.key(2)
            smc_result = its.run(steered, key, x, num_steps=STEPS)
            plain_result = its.run(base, key, x, num_steps=STEPS)
            assert int(smc_result.stats.nfe) == int(plain_result.stats.nfe) == n * STEPS
            assert int(smc_result.output.info["num_resamples"]) == STEPS - 1
            fns = {"smc": lambda: its.run(steered, key, x, num_steps=STEPS).output,
                   "plain": lambda: its.run(base, key, x, num_steps=STEPS).output}
            try:
                bj = _blackjax_fk(base, n)
            except ImportError:
                bj = None
            if bj is not None:
                fns["blackjax"] = lambda: bj(key, x)
            targeted = model_name.startswith("MLP")
            # The Gaussian-mixture runs take about a millisecond: more repeats steady their medians.
            times = time_interleaved(fns, repeats=repeats if targeted else 8 * repeats)
            ratio = times["smc"] / times["plain"]
            case = f"N={n}, {STEPS} steps, resample every step, {model_name}"
            per_step = (times["smc"] - times["plain"]) / STEPS * 1e6
            out.append({"bench": "SMC / plain batched sampling (equal NFE)", "case": case, "value": ratio,
                        "unit": "x", "target": "<= 1.15x" if targeted else "",
                        "ok": ratio <= 1.15 if targeted else None,
                        "note": f"plain {times['plain'] * 1e3:.2f} ms; SMC bookkeeping {per_step:.0f} us "
                                "per step"})
            if bj is not None:
                ratio = times["smc"] / times["blackjax"]
                peer_per_step = (times["blackjax"] - times["plain"]) / STEPS * 1e6
                out.append({"bench": "its.search.smc / blackjax.smc.base.step loop", "case": case,
                            "value": ratio, "unit": "x", "target": "<= 1.05x" if targeted else "",
                            "ok": ratio <= 1.05 if targeted else None,
                            "note": f"blackjax {times['blackjax'] * 1e3:.2f} ms; its SMC bookkeeping "
                                    f"{per_step:.0f} us per step, blackjax {peer_per_step:.0f} us"})
    return out


if __name__ == "__main__":
    from experiments.common import markdown_table

    print(markdown_table(rows()))
