"""Look a path up by name: ``get("vp", beta_max=10.0)``."""

from __future__ import annotations

from itscale.core.checks import choice
from itscale.paths.edm import edm
from itscale.paths.linear import linear
from itscale.paths.path import Path
from itscale.paths.ve import ve
from itscale.paths.vp import vp
from itscale.paths.vp_cosine import vp_cosine

FACTORIES = {"linear": linear, "vp": vp, "vp_cosine": vp_cosine, "ve": ve, "edm": edm}


def get(name: str, **kwargs) -> Path:
    """Build the path called ``name`` (one of ``FACTORIES``) with the factory's keyword arguments."""
    return FACTORIES[choice("path name", name, FACTORIES)](**kwargs)
