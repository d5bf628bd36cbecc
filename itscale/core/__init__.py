"""Core: the ``Sampler`` type, the ``run`` loop, compute accounting and combinators."""

from itscale.core import checks, multiprocess, sharding
from itscale.core.chain import chain
from itscale.core.counting import (batch_size, cond, counted, eval_shape, scan, static_cost, switch,
                                   token_positions, unless, vmap, while_loop)
from itscale.core.keys import split_per_particle, step_key
from itscale.core.particles import particles
from itscale.core.predictor_corrector import predictor_corrector
from itscale.core.run import Result, SaveAt, Stats, Trace, count_nonfinite, run
from itscale.core.sampler import Sampler, StepContext, identity_finalize, init_state
from itscale.core.weights import ModelProxy, binding, takes_models

__all__ = [
    "ModelProxy", "Result", "Sampler", "SaveAt", "Stats", "StepContext", "Trace", "batch_size", "binding",
    "chain", "checks", "cond", "count_nonfinite", "counted", "eval_shape", "identity_finalize", "init_state",
    "multiprocess", "particles", "predictor_corrector", "run", "scan", "sharding", "split_per_particle",
    "static_cost", "step_key", "switch", "takes_models", "token_positions", "unless", "vmap", "while_loop",
]
