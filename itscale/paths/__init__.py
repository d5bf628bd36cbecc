"""Noising paths x_t = alpha(t) x0 + sigma(t) eps, conversions between model predictions, time grids."""

from itscale.paths import conversions
from itscale.paths.conversions import (
    PREDICTIONS,
    as_eps,
    as_score,
    as_velocity,
    as_x0,
    convert,
    eps_from_score,
    eps_from_velocity,
    eps_from_x0,
    score_from_eps,
    score_from_velocity,
    score_from_x0,
    velocity_from_eps,
    velocity_from_score,
    velocity_from_x0,
    x0_from_eps,
    x0_from_score,
    x0_from_velocity,
)
from itscale.paths.edm import EDMPath, edm
from itscale.paths.grids import KINDS as GRID_KINDS
from itscale.paths.grids import Grid, check_times, grid
from itscale.paths.linear import LinearPath, linear
from itscale.paths.path import Path, expand_time
from itscale.paths.registry import FACTORIES, get
from itscale.paths.snr_matching import SNRMatching, change_path, snr_matching
from itscale.paths.ve import VEPath, ve
from itscale.paths.vp import VPPath, vp
from itscale.paths.vp_cosine import VPCosinePath, vp_cosine

NAMES = tuple(FACTORIES)
