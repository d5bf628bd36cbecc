"""``its.refine.ode``: integrate the flow ODE dx/dt = u(x, t) from t_max (noise) to t_min (data).

``ode(velocity_fn, solver, grid, path)`` returns an :class:`itscale.Sampler`; ``its.run(sampler, key,
x1, num_steps=n)`` makes ``n`` solver steps over the grid's ``n + 1`` times and returns x at t_min.
The velocity follows the path convention u = alpha_dot x0 + sigma_dot eps (``itscale.paths``).

Solvers (``SOLVERS[name]`` declares ``order`` and ``nfe_per_step``):

=================== ===== ===== ==========================================================
name                order NFE   notes
=================== ===== ===== ==========================================================
euler               1     1     explicit Runge--Kutta in t
midpoint            2     2
heun                2     2     (EDM's second-order step)
rk4                 4     4
ddim                1     1     needs ``path``; ``params["eta"]`` > 0 makes it stochastic
dpm_solver_pp_2m    2     1     needs ``path``; multistep, history in the state
unipc               3     1     needs ``path``; UniPC-2 (bh2) predictor--corrector
deis_2              2     1     needs ``path``; tAB-DEIS, eps extrapolated linearly in t
deis_3              3     1     needs ``path``; tAB-DEIS, quadratic in t, corrected start
=================== ===== ===== ==========================================================

``solver``: a name above, a :class:`itscale.refine.Solver` record of one's own (same contract: ``init``,
``step``, optional ``schedule``; its NFE is counted from the model calls it makes, like the built-in ones'),
or an explicit Runge--Kutta method as a Butcher :class:`itscale.refine.Tableau` ``(a, b, c)``, checked and
run as :func:`itscale.refine.runge_kutta` builds it, its order read from the order conditions up to 4
(``its.refine.tableau_order``); ``runge_kutta(name, tableau, order)`` declares a name and an order.

``grid``: a kind name, an :class:`itscale.paths.Grid`, or an explicit strictly decreasing 1-D array of
times in [0, 1] (then ``num_steps`` must be ``len(times) - 1``). A kind name runs from t_max = 1 to the
data: ``"uniform"`` and ``"quadratic"`` end at t_min = 0 without ``path`` (the flow convention) and on
every path whose velocity is finite at t = 0 (``linear``, ``ve``, ``edm``), and at t_min = 1e-3 where it is
singular (``vp``, ``vp_cosine``); ``"karras"`` and ``"log_snr"`` (which need ``path``, a finite log-SNR
at t_min and alpha(t_max) > 0) keep t_min = 1e-3 (:func:`itscale.refine.grid_times.default_t_min`). A
``Grid(...)`` or an array is taken exactly as given: ``Grid("uniform", t_min=1e-3)`` is the old default.
A velocity_fn that is not finite at t = 0 although the path is (e.g. one converted from an x0 prediction
where sigma(0) = 0) needs such an explicit grid. The exponential
integrators step in lambda = log(alpha / sigma): on a grid ending at sigma = 0 (t_min = 0 on the linear
path) their last step is the denoising x = x0_hat, which caps them at order 2; a grid whose lambda-steps
are all finite and small (``log_snr``) shows their declared order (``experiments/convergence.py``).
DEIS integrates eps against d(sigma / alpha) with eps extrapolated in t: it needs eps smooth in t (on the
VP path near t = 0, where sigma ~ sqrt(t), use the ``log_snr`` grid), and ``deis_3`` is order 2 on a grid
starting at alpha = 0 (see :mod:`solvers.deis`). A grid ending where the path's velocity is singular
(t = 0 on ``vp`` and ``vp_cosine``, where sigma_dot is infinite) makes the last step of the Runge--Kutta
solvers the denoising x = x0_hat from its first model call (1 NFE: their later stages would call the model
at the singular time); without ``path`` the singularity is unknown and the step unchanged.

State: a NamedTuple whose leaves are all shaped like ``x`` (batch leading) and keep ``x``'s dtype, with
field ``x``; multistep solvers also keep their earlier model outputs there (the first step uses a lower
order). Times, solver coefficients and each step's update are computed in at least float32, and the new
state is stored back in the state's dtype, stochastically rounded below float32 (:mod:`grid_times`); the
model gets t in the times' dtype and x in the state's. ``info``:
``{"x0_hat": ...}`` (the denoised estimate at the pre-step state, from the step's first model call)
when ``path`` is given, ``{}`` otherwise; DDIM adds ``"log_prob"`` (see :mod:`solvers.ddim`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.core.counting import counted
from itscale.core.sampler import Sampler
from itscale.paths.path import Path
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.sde import check_noise
from itscale.refine.solvers import SOLVERS, Clock, Model, Solver, Tableau, runge_kutta
from itscale.refine.solvers.base import denoise_flag
from itscale.refine.solvers.runge_kutta import check_tableau
from itscale.core.weights import takes_models

_check_params = checks.param_ranges(eta=(0.0, float("inf")))


def _schedule_row(spec, path, times, step) -> dict:
    """This step's row of the solver's coefficient tables. The tables depend only on the constant grid,
    so XLA folds them into constants (or hoists them out of the loop): the loop body gathers a few
    scalars instead of re-deriving alpha, sigma, lambda and the solver weights at every step."""
    if spec.schedule is None:
        return None
    return {k: jnp.asarray(v, times.dtype)[step] for k, v in spec.schedule(path, times).items()}


_ACCEPTED_SOLVERS = ("a name in itscale.refine.SOLVERS ('euler', 'heun', ...), an itscale.refine.Solver "
                     "record or an explicit Runge--Kutta method as an itscale.refine.Tableau(a, b, c)")


def solver_record(solver) -> Solver:
    """The :class:`Solver` record ``ode`` runs for ``solver``: ``SOLVERS[name]`` for a name, the record itself
    for a :class:`Solver` (its fields checked), ``runge_kutta("tableau(m stages)", solver)`` for a
    :class:`Tableau` (its order read from the order conditions; build the record with
    ``runge_kutta(name, tableau, order)`` to declare a name and an order). Anything else raises
    ``TypeError`` listing the accepted forms."""
    if isinstance(solver, str):
        return SOLVERS[checks.choice("solver", solver, SOLVERS)]
    if isinstance(solver, Solver):
        _check_record(solver)
        return solver
    if isinstance(solver, Tableau):
        tableau = check_tableau(solver, "solver")
        return runge_kutta(f"tableau({len(tableau.b)} stages)", tableau, argument="solver")
    raise TypeError(f"solver must be {_ACCEPTED_SOLVERS}; got {solver!r} of type {type(solver).__name__}")


def _check_record(solver: Solver) -> None:
    """The static fields of a user's :class:`Solver` record, checked before any compute."""
    if not isinstance(solver.name, str):
        raise TypeError(f"solver.name must be a str, got {solver.name!r}")
    checks.positive_int("solver.order", solver.order)
    checks.positive_int("solver.nfe_per_step", solver.nfe_per_step)
    if not isinstance(solver.needs_path, (bool, np.bool_)):
        raise TypeError(f"solver.needs_path must be a bool, got {solver.needs_path!r}")
    for field in ("init", "step"):
        if not callable(getattr(solver, field)):
            raise TypeError(f"solver.{field} must be callable, got {getattr(solver, field)!r}")
    if solver.schedule is not None and not callable(solver.schedule):
        raise TypeError(f"solver.schedule must be None or callable fn(path, times) -> {{name: array}}, got "
                        f"{solver.schedule!r}")


@takes_models
def ode(velocity_fn: Callable, solver: str | Solver | Tableau = "euler", grid="uniform",
        path: Path | None = None) -> Sampler:
    """A sampler integrating dx/dt = velocity_fn(x, t) from t_max to t_min; see the module docstring.

    Args:
      velocity_fn: ``fn(x, t) -> u`` with ``u`` of ``x``'s shape and dtype; ``t`` is passed as a scalar of
        at least float32 (for a bfloat16 ``x`` too).
      solver: a name in ``SOLVERS`` (``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``, ``"ddim"``,
        ``"dpm_solver_pp_2m"``, ``"unipc"``, ``"deis_2"``, ``"deis_3"``), a :class:`itscale.refine.Solver`
        record (a solver of one's own, same contract as the built-in ones), or an explicit Runge--Kutta
        method as a Butcher :class:`itscale.refine.Tableau` (its order read from the order conditions).
      grid: a grid kind name (t_min defaults to 0 where the model is finite there, see the module
        docstring), an :class:`itscale.paths.Grid`, or an explicit decreasing array of times.
      path: the :class:`itscale.paths.Path` of the model; required by ``ddim``, ``dpm_solver_pp_2m``,
        ``unipc``, ``deis_*`` and by the ``karras`` / ``log_snr`` grids; enables ``info["x0_hat"]`` for
        all solvers.
    """
    if not callable(velocity_fn):
        raise TypeError(f"velocity_fn must be a callable fn(x, t) -> velocity, got "
                        f"{type(velocity_fn).__name__}")
    spec = solver_record(solver)
    checks.path("path", path, optional=True)
    if spec.needs_path and path is None:
        raise ValueError(f"solver {spec.name!r} works with x0 / eps predictions converted from the velocity "
                         f"and needs the model's path: pass path=itscale.paths.linear() (or vp(), ...)")
    times_rule = grid_times(grid, path)
    model = Model(counted(velocity_fn), path)

    def init(key, x, params):
        check_noise("x", x)
        return spec.init(x)

    def step(key, state, ctx, params):
        times = times_rule(ctx.num_steps, state.x.dtype)
        clock = Clock(times, ctx.step, _schedule_row(spec, path, times, ctx.step))
        clock = clock._replace(denoise=denoise_flag(path, times, clock.t(1)))
        new_state, info = spec.step(model, state, clock, key, params)
        return round_like(key, new_state, state), info

    return Sampler(init, step, _state_x, spec.params, watch=_state_x, prior=noise_prior(path, grid),
                   validate=_check_params, nfe_per_step=spec.nfe_per_step)


def _state_x(state):
    """The sample. It is also all that ``its.run`` watches for non-finite values: every model output a
    multistep solver keeps enters the same step's update of x, so a non-finite one shows there."""
    return state.x
