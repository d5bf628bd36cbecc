"""Base samplers with known laws for the search tests, on the linear path x_t = (1 - t) x0 + t eps.

``exact_ancestral(gmm)``: every step draws x_s ~ p(x_s | x_t) exactly. Given the component k, (x_s, x_t)
are jointly Gaussian (x_t = a x_s + tau eps', a = alpha_t / alpha_s, tau^2 = sigma_t^2 - a^2 sigma_s^2),
so p(x_s | x_t) = sum_k p(k | x_t) N(m_k, V_k) with C_s = alpha_s^2 Sigma_k + sigma_s^2 I,
C_t = a^2 C_s + tau^2 I, m_k = alpha_s mu_k + a C_s C_t^{-1} (x_t - alpha_t mu_k),
V_k = C_s - a^2 C_s C_t^{-1} C_s.
Started from x_1 ~ N(0, I) the output is an exact draw of the mixture for any number of steps, so SMC
over it has no discretisation bias: the log Z test measures SMC alone.

``euler_maruyama(gmm)``: the reverse SDE with g^2 = 2 t (the DDPM-like choice for the linear path),
drift u - g^2 / 2 * score from the exact velocity and score (Kim et al. 2025, arXiv 2503.19385).
Both report ``info["x0_hat"]`` = E[x0 | x_t] at the pre-step state, as the refine samplers do.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

import itscale as its

PATH = its.paths.linear()


class State(NamedTuple):
    x: jax.Array


def _times(ctx, dtype):
    t = 1.0 - ctx.step.astype(dtype) / ctx.num_steps
    s = 1.0 - (ctx.step + 1).astype(dtype) / ctx.num_steps
    return t, s


def exact_ancestral(gmm) -> its.Sampler:
    denoiser = its.counted(gmm.denoiser(PATH))
    eye = jnp.eye(gmm.dim, dtype=gmm.means.dtype)

    def step(key, state, ctx, params):
        x = state.x
        t, s = _times(ctx, x.dtype)
        x0_hat = denoiser(x, t)
        alpha_t, sigma_t, alpha_s, sigma_s = 1.0 - t, t, 1.0 - s, s
        a = alpha_t / alpha_s
        tau2 = sigma_t**2 - a**2 * sigma_s**2
        c_s = alpha_s**2 * gmm.covs + sigma_s**2 * eye                                  # (K, d, d)
        c_t = a**2 * c_s + tau2 * eye
        marginal = its.models.GaussianMixture(gmm.weights, alpha_t * gmm.means, c_t)
        diff = x[:, None, :] - alpha_t * gmm.means                                     # (N, K, d)
        log_resp = jnp.log(gmm.weights) + jax.vmap(
            lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(x, m, c), out_axes=1)(marginal.means,
                                                                                        marginal.covs)
        gain = a * jnp.swapaxes(jnp.linalg.solve(c_t, c_s), 1, 2)                     # a C_s C_t^{-1}
        means = alpha_s * gmm.means + jnp.einsum("kij,nkj->nki", gain, diff)
        covs = c_s - a * gain @ c_s
        key_k, key_z = jax.random.split(key)
        k = jax.random.categorical(key_k, log_resp, axis=-1)
        chol = jnp.linalg.cholesky(covs)
        z = jax.random.normal(key_z, x.shape, x.dtype)
        mean = jnp.take_along_axis(means, k[:, None, None], axis=1)[:, 0]
        x_new = mean + jnp.einsum("nij,nj->ni", chol[k], z)
        return State(x_new), {"x0_hat": x0_hat}

    return its.Sampler(lambda key, x, params: State(x), step, lambda state: state.x)


def euler_maruyama(gmm) -> its.Sampler:
    velocity, score = its.counted(gmm.velocity(PATH)), gmm.score(PATH)
    denoiser = gmm.denoiser(PATH)

    def step(key, state, ctx, params):
        x = state.x
        t, s = _times(ctx, x.dtype)
        dt = t - s
        u = velocity(x, t)
        g2 = 2.0 * t
        drift = u - 0.5 * g2 * score(x, t)
        x_new = x - drift * dt + jnp.sqrt(g2 * dt) * jax.random.normal(key, x.shape, x.dtype)
        return State(x_new), {"x0_hat": denoiser(x, t)}

    return its.Sampler(lambda key, x, params: State(x), step, lambda state: state.x)


def one_shot(gmm) -> its.Sampler:
    """One step that replaces the noise by an exact draw of the mixture (exact at t = 0)."""
    draw = its.counted(lambda x, key: gmm.sample(key, x.shape[0]).astype(x.dtype))

    def step(key, state, ctx, params):
        return State(draw(state.x, key)), {}

    return its.Sampler(lambda key, x, params: State(x), step, lambda state: state.x)


def quadratic_reward(center, precision):
    """r(x) = -0.5 (x - c)^T A (x - c), batched over the leading axis."""
    center, precision = jnp.asarray(center), jnp.asarray(precision)

    def reward(x):
        d = x - center
        return -0.5 * jnp.einsum("ni,ij,nj->n", d, precision, d)

    return reward
