"""PyTorch eager peers of the ODE solvers of ``its.refine.ode``: the same MLP weights and the same update
rules, written the way PyTorch samplers are (diffusers / k-diffusion): a Python loop over steps, the
schedule precomputed on the host as Python floats, one eager op at a time, under ``torch.inference_mode``.

``TorchMLP.from_nnx(model)`` copies an :class:`itscale.models.mlp.MLP`; ``sample(solver, velocity, x,
times, path)`` integrates from ``times[0]`` to ``times[-1]``. The tests of the bench check that the
peers agree with ``its.refine.ode`` to float32 precision, so the timings compare the same computation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from itscale.refine.solvers.runge_kutta import EULER, HEUN, MIDPOINT, RK4

TABLEAUS = {"euler": EULER, "midpoint": MIDPOINT, "heun": HEUN, "rk4": RK4}


class TorchMLP(torch.nn.Module):
    """silu MLP on [x, sin(w t), cos(w t)], w_k = pi 2^k: the forward of :class:`itscale.models.mlp.MLP`."""

    def __init__(self, layers: list[torch.nn.Linear], time_features: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(time_features, dtype=torch.float32))

    @classmethod
    def from_nnx(cls, model) -> TorchMLP:
        layers = []
        for layer in model.layers:
            kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
            linear = torch.nn.Linear(*kernel.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
                linear.bias.copy_(torch.from_numpy(bias.copy()))
            layers.append(linear)
        return cls(layers, model.time_features)

    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        angles = (t * self.frequencies).expand(x.shape[0], -1)
        h = torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)
        for layer in self.layers[:-1]:
            h = torch.nn.functional.silu(layer(h))
        return self.layers[-1](h)


def schedule(path, times) -> dict[str, np.ndarray]:
    """alpha, sigma, alpha_dot, sigma_dot and lambda = log(alpha / sigma) at the grid times (float64)."""
    t = np.asarray(times, np.float64)
    table = {name: np.asarray(getattr(path, name)(t), np.float64)
             for name in ("alpha", "sigma", "alpha_dot", "sigma_dot")}
    with np.errstate(divide="ignore"):
        table["lam"] = np.log(table["alpha"]) - np.log(table["sigma"])
    return table


def _runge_kutta(tableau, velocity, x, times):
    def combine(x, h, weights, slopes):
        for w, k in zip(weights, slopes):
            if w != 0.0:
                x = x + (h * w) * k
        return x

    for t, s in zip(times[:-1], times[1:]):
        h = s - t
        slopes = [velocity(x, t)]
        for a_j, c_j in zip(tableau.a[1:], tableau.c[1:]):
            slopes.append(velocity(combine(x, h, a_j, slopes), t + c_j * h))
        x = combine(x, h, tableau.b, slopes)
    return x


def _x0(table, i, u, x):
    a, s, ad, sd = (table[k][i] for k in ("alpha", "sigma", "alpha_dot", "sigma_dot"))
    return (s * u - sd * x) / (ad * s - a * sd)


def _data_update(table, i, j, x, d):
    """x_{t_j} = (sigma_j / sigma_i) x + (alpha_j - (sigma_j / sigma_i) alpha_i) d."""
    ratio = table["sigma"][j] / table["sigma"][i]
    return ratio * x + (table["alpha"][j] - ratio * table["alpha"][i]) * d


def _two_step(table, i, x0, x0_prev):
    """DPM-Solver++(2M) estimate for the step i -> i + 1 (first order without a finite history)."""
    lam = table["lam"]
    if i == 0:
        return x0
    h, h_prev = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
    if not (math.isfinite(h) and math.isfinite(h_prev)):
        return x0
    return x0 + (0.5 * h / h_prev) * (x0 - x0_prev)


def _phi_ratios(h):
    """(b1, b2) = (phi_2 / phi_1, 2 phi_3 / phi_1) at z = -h."""
    if not math.isfinite(h):
        return 1.0, 1.0
    z = -h
    if abs(z) < 0.1:
        phi = [sum(z**j / math.factorial(j + k) for j in range(9)) for k in (1, 2, 3)]
    else:
        phi1 = math.expm1(z) / z
        phi2 = (phi1 - 1.0) / z
        phi = [phi1, phi2, (phi2 - 0.5) / z]
    return phi[1] / phi[0], 2.0 * phi[2] / phi[0]


def _ddim(velocity, x, table):
    for i in range(len(table["lam"]) - 1):
        u = velocity(x, table["t"][i])
        a, s, ad, sd = (table[k][i] for k in ("alpha", "sigma", "alpha_dot", "sigma_dot"))
        x0, eps = (s * u - sd * x) / (ad * s - a * sd), (ad * x - a * u) / (ad * s - a * sd)
        x = table["alpha"][i + 1] * x0 + table["sigma"][i + 1] * eps
    return x


def _dpm_solver_pp_2m(velocity, x, table):
    x0_prev = None
    for i in range(len(table["lam"]) - 1):
        x0 = _x0(table, i, velocity(x, table["t"][i]), x)
        x = _data_update(table, i, i + 1, x, _two_step(table, i, x0, x0_prev))
        x0_prev = x0
    return x


def _unipc(velocity, x, table):
    lam, m_prev, m_prev2, x_prev = table["lam"], None, None, None
    for i in range(len(lam) - 1):
        m = _x0(table, i, velocity(x, table["t"][i]), x)
        if i >= 1:
            h = lam[i] - lam[i - 1]
            b1, b2 = _phi_ratios(h)
            rho1, r1 = 0.0, -1.0
            if i >= 2 and math.isfinite(h):
                r1 = (lam[i - 2] - lam[i - 1]) / h
                if math.isfinite(r1) and r1 < 0:
                    rho1 = (b1 - b2) / (1.0 - r1)
                else:
                    r1 = -1.0
            d = m_prev + (b1 - rho1) * (m - m_prev)
            if rho1 != 0.0:
                d = d + (rho1 / r1) * (m_prev2 - m_prev)
            x = _data_update(table, i - 1, i, x_prev, d)
        x_prev = x
        x = _data_update(table, i, i + 1, x, _two_step(table, i, m, m_prev))
        m_prev, m_prev2 = m, m_prev
    return x


def d_rho_nodes(path, times, nodes: int = 16) -> dict[str, np.ndarray]:
    """Gauss--Legendre nodes ``tau`` and weights ``d_rho`` (rho = sigma / alpha) on each step [t_{i+1}, t_i]:
    sum_k d_rho[i, k] f(tau[i, k]) = int_{t_i}^{t_{i+1}} f(tau) rho'(tau) d tau, in the DEIS paper's t."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    t = np.asarray(times, np.float64)
    start, end = t[:-1, None], t[1:, None]
    tau = 0.5 * (start + end) + 0.5 * (end - start) * u
    a, s, ad, sd = (np.asarray(getattr(path, n)(tau), np.float64)
                    for n in ("alpha", "sigma", "alpha_dot", "sigma_dot"))
    return {"tau": tau, "d_rho": 0.5 * (end - start) * w * (sd * a - s * ad) / a**2}


def _lagrange(tau, nodes, j):
    return math.prod((tau - node) / (nodes[j] - node) for k, node in enumerate(nodes) if k != j)


def _deis_weights(table, order):
    """Per step i, the weights C_ij (j >= 1) of the eps differences, on the host; and R, the weight of the
    corrected start of deis_3 (0 where alpha(t_0) = 0)."""
    alpha, t, tau, d_rho = (table[k] for k in ("alpha", "t", "tau", "d_rho"))
    weights = []
    for i in range(len(t) - 1):
        nodes = [t[i - j] for j in range(min(i + 1, order))]
        weights.append([alpha[i + 1] * float(np.sum(d_rho[i] * _lagrange(tau[i], nodes, j)))
                        for j in range(1, len(nodes))])
    restart = 0.0
    if order == 3 and alpha[0] > 0 and len(t) > 2:
        restart = alpha[1] * float(np.sum(d_rho[0] * (tau[0] - t[0]) / (t[1] - t[0])))
    return weights, restart


def _deis(order):
    """tAB-DEIS: x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i + sum_j C_ij (eps_{i-j} - eps_i); deis_3
    re-solves its first step with the second evaluation (linear eps between t_0 and t_1)."""

    def sample(velocity, x, table):
        alpha, sigma, t = table["alpha"], table["sigma"], table["t"]
        weights, restart = _deis_weights(table, order)
        history = []  # eps at t_{i-1}, t_{i-2}, newest first
        for i in range(len(t) - 1):
            u = velocity(x, t[i])
            a, s, ad, sd = (table[k][i] for k in ("alpha", "sigma", "alpha_dot", "sigma_dot"))
            x0, eps = (s * u - sd * x) / (ad * s - a * sd), (ad * x - a * u) / (ad * s - a * sd)
            if i == 1 and restart != 0.0:
                x = x + restart * (eps - history[0])
                x0 = (x - sigma[1] * eps) / alpha[1]
            x_next = alpha[i + 1] * x0 + sigma[i + 1] * eps
            for c, eps_prev in zip(weights[i], history):
                x_next = x_next + c * (eps_prev - eps)
            history = [eps, *history][:order - 1]
            x = x_next
        return x

    return sample


EXPONENTIAL = {"ddim": _ddim, "dpm_solver_pp_2m": _dpm_solver_pp_2m, "unipc": _unipc, "deis_2": _deis(2),
               "deis_3": _deis(3)}
SOLVERS = tuple(TABLEAUS) + tuple(EXPONENTIAL)


def sample(solver: str, velocity, x: torch.Tensor, times, path=None) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) over ``times`` (decreasing) with ``solver``; eager PyTorch."""
    times = [float(t) for t in times]
    with torch.inference_mode():
        if solver in TABLEAUS:
            return _runge_kutta(TABLEAUS[solver], velocity, x, times)
        table = {**schedule(path, times), "t": times}
        if solver.startswith("deis"):
            table.update(d_rho_nodes(path, times))
        return EXPONENTIAL[solver](velocity, x, table)


def best_thread_seconds(fn, repeats: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` at PyTorch's best thread count, and that count: ``repeats`` runs with
    one thread, a third as many with the default count (on a shared machine the default OpenMP threads can
    be far slower than one: a descheduled worker stalls every parallel region), so the peer runs at its
    best."""
    from experiments.bench.timing import time_fn

    default_threads = torch.get_num_threads()
    best = (float("inf"), default_threads)
    for threads, count in {default_threads: max(3, repeats // 3), 1: repeats}.items():
        torch.set_num_threads(threads)
        try:
            best = min(best, (time_fn(fn, repeats=count), threads))
        finally:
            torch.set_num_threads(default_threads)
    return best

