"""Refinement-axis samplers: ODE solvers of the flow ODE, SDE samplers, predictor-corrector moves,
Langevin sampling of energy-based models (MALA / ULA) and multistep consistency sampling."""

from itscale.refine.consistency import consistency
from itscale.refine.ddpm import ddpm
from itscale.refine.diffrax_bridge import adaptive, diffrax_ode
from itscale.refine.diffusion_coefficients import diffusion_coefficient
from itscale.refine.guided import guided
from itscale.refine.interpolant import convert_path
from itscale.refine.langevin import langevin
from itscale.refine.mala import MALAState, mala
from itscale.refine.ode import ode
from itscale.refine.restart import restart
from itscale.refine.sde import sde
from itscale.refine.solvers import SOLVERS, Solver, Tableau, runge_kutta, tableau_order

__all__ = ["MALAState", "SOLVERS", "Solver", "Tableau", "adaptive", "consistency", "convert_path", "ddpm", "diffrax_ode",
           "diffusion_coefficient", "guided", "langevin", "mala", "ode", "restart", "runge_kutta", "sde",
           "tableau_order"]
