"""ODE solvers for :func:`itscale.refine.ode`, with their static declarations.

``SOLVERS[name]`` is a :class:`Solver` record: ``.order`` (global order of accuracy), ``.nfe_per_step``,
``.needs_path`` (exponential integrators need x0 / eps predictions from the path), ``.params``
(default traced hyper-parameters), ``.reference``. The convergence tests measure against these.
:func:`itscale.refine.ode` also runs a :class:`Solver` record of one's own, or an explicit Runge--Kutta
method given as a Butcher :class:`Tableau` (``runge_kutta(name, tableau, order=None)`` builds its record,
reading the order from the order conditions, :func:`tableau_order`).
"""

from itscale.refine.solvers.base import Clock, Model, Solver
from itscale.refine.solvers.ddim import ddim
from itscale.refine.solvers.deis import deis_2, deis_3
from itscale.refine.solvers.dpm_solver import dpm_solver_pp_2m
from itscale.refine.solvers.runge_kutta import Tableau, euler, heun, midpoint, rk4, runge_kutta, tableau_order
from itscale.refine.solvers.unipc import unipc

SOLVERS = {s.name: s for s in (euler, heun, midpoint, rk4, ddim, dpm_solver_pp_2m, unipc, deis_2, deis_3)}

__all__ = ["Clock", "Model", "SOLVERS", "Solver", "Tableau", "runge_kutta", "tableau_order"]
