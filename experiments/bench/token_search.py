"""Token search benchmarks: each search strategy against plain sampling of the same tokens.

Model: the study's arithmetic transformer shape (width 64, depth 2, 4 heads, vocabulary 16), randomly
initialised (timing does not depend on training; a random model writes full-length steps, so the
searches spend their whole budget). Prompts: worked-addition prompts ``a+b=`` (3 digits, P = 8).

* best-of-N: ``its.search.best_of_n(rollout, exact outcome verifier, N)`` on Q prompts vs
  ``its.run(rollout)`` on the Q·N repeated prompts (equal NFE, checked);
* SMC over a rollout: ``its.search.smc(its.tokens.rollout(..., noise="step"), process verifier,
  num_particles=N)`` on one prompt's N copies, vs the same rollout on the N rows (equal NFE, checked).
  Three rows: the default ESS-triggered resampling (the realistic setting; the process verifier scores
  every particle after every token), resampling after every token (``ess_threshold=1``), and the same
  with a free reward (r = 0), which leaves the resampling machinery alone (equal weights: every
  particle keeps its one offspring, so nothing is copied). Resampling runs in place
  (``itscale.search.in_place``): each event copies the KV-cache rows of the particles that left no
  offspring, a large fraction of a decode step on this small model when many die (its cache is big
  next to its FLOPs per token). The verifier rows include the verifier's own cost: one process-reward
  call on all N = 128 particles after every token costs about 0.05 ms, against about 0.7 ms for the
  decode step of those rows;
* the step-level searches of ``itscale.tokens`` when exported (beam search, DVTS, REBASE, particle
  filter) with the process verifier, W rows per query over num_steps x step_length = 4 x 9 tokens,
  vs plain sampling of W rows of 36 tokens per query from a shared prefill
  (``its.tokens.search.shared_prompt``): the same sequences x length; the search may stop a step
  early when every row has ended it, so its NFE is at most the plain one (both reported).

Value: median wall time of the search / median wall time of plain sampling, interleaved in one run;
target <= 1.2x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import itscale as its
from experiments.bench.timing import time_interleaved
from itscale.models.transformer import Transformer, logits_fn
from itscale.verifiers import arithmetic

MAX_DIGITS = 3
NUM_STEPS = MAX_DIGITS + 1
STEP_TOKENS = NUM_STEPS * arithmetic.STEP_LENGTH
TARGET = 1.2


def _model() -> Transformer:
    """The random model, with every parameter moved by N(0, 0.02²) noise as training would: at
    initialisation the biases are 0 and the norm scales 1, constants that XLA folds away in the plain
    rollout's loop but not inside the searches' nested loops, which would favour the plain side."""
    max_len = arithmetic.prompt_length(MAX_DIGITS) + STEP_TOKENS
    model = Transformer(arithmetic.VOCAB_SIZE, width=64, depth=2, num_heads=4, max_len=max_len,
                        rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [leaf + 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
                                                   for leaf, k in zip(leaves, keys)]))
    return model


def _prompts(num: int) -> jax.Array:
    return arithmetic.sample_problems(jax.random.key(3), num, MAX_DIGITS, min_digits=2).prompts


def _outcome(generation):
    return arithmetic.outcome_reward(generation.tokens, generation.tokens)


def _process(generation):
    return arithmetic.process_reward(generation.tokens, MAX_DIGITS)


def _free(generation):
    return jnp.zeros(generation.tokens.shape[:1], jnp.float32)


def _row(bench, case, times, nfe, search="search", plain="plain") -> dict:
    ratio = times[search] / times[plain]
    return {"bench": bench, "case": case, "value": ratio, "unit": "x", "target": f"<= {TARGET}x",
            "ok": bool(ratio <= TARGET),
            "note": f"plain {times[plain] * 1e3:.1f} ms; NFE search {nfe[search]}, plain {nfe[plain]}"}


def _compare(bench, case, runs: dict, repeats: int) -> dict:
    """``runs``: name -> (sampler, x, num_steps); times both, returns the row."""
    key = jax.random.key(0)
    nfe = {name: int(its.run(s, key, x, num_steps=n).stats.nfe) for name, (s, x, n) in runs.items()}
    fns = {name: (lambda s=s, x=x, n=n: its.run(s, key, x, num_steps=n).output) for name, (s, x, n) in runs.items()}
    return _row(bench, case, time_interleaved(fns, repeats=repeats), nfe), nfe


def rows(quick: bool = False) -> list[dict]:
    repeats = 5 if quick else 9
    model = _model()
    fn = logits_fn(model)
    options = dict(eos_id=arithmetic.EOS, pad_id=arithmetic.PAD, init_cache=model.init_cache,
                   max_len=model.max_len)
    completion = arithmetic.completion_length(MAX_DIGITS)
    out = []

    # best-of-N vs plain sampling of the same Q x N sequences
    queries, n = (8, 16) if quick else (32, 16)
    prompts = _prompts(queries)
    rollout = its.tokens.rollout(fn, max_new_tokens=completion, **options)
    row, nfe = _compare("best-of-N / plain sampling (equal NFE)", f"Q={queries} prompts x N={n}, {completion} tokens",
                        {"search": (its.search.best_of_n(rollout, _outcome, num_candidates=n), prompts, completion),
                         "plain": (rollout, jnp.repeat(prompts, n, axis=0), completion)}, repeats)
    assert nfe["search"] == nfe["plain"], nfe
    out.append(row)

    # SMC over a token rollout: the default ESS-triggered resampling, then resampling after every token
    particles = 128 if quick else 512
    stepwise = its.tokens.rollout(fn, max_new_tokens=completion, noise="step", **options)
    x = jnp.repeat(prompts[:1], particles, axis=0)
    for reward, threshold, what in (
            (_process, 0.5, "ESS-triggered resampling (ESS < N/2, the default), process verifier every token"),
            (_process, 1.0, "resample every token, process verifier every token"),
            (_free, 1.0, "resample every token, free reward r = 0 (the resampling machinery alone; equal "
                         "weights leave every particle in place)")):
        steered = its.search.smc(stepwise, reward, num_particles=particles, ess_threshold=threshold)
        row, nfe = _compare("SMC over rollout / plain sampling (equal NFE)",
                            f"N={particles} particles, {completion} tokens, {what}",
                            {"search": (steered, x, completion), "plain": (stepwise, x, completion)}, repeats)
        assert nfe["search"] == nfe["plain"], nfe
        resamples = int(its.run(steered, jax.random.key(0), x, num_steps=completion).output.info["num_resamples"])
        row["note"] += f"; {resamples} resampling events"
        out.append(row)

    # the step-level searches of itscale.tokens, when exported
    width = 16 if quick else 32
    prompt_len = prompts.shape[1]
    budget = prompt_len + width * STEP_TOKENS
    plain = its.tokens.search.shared_prompt(its.tokens.rollout(fn, max_new_tokens=STEP_TOKENS, **options), width) \
        if hasattr(its.tokens, "search") else None
    common = dict(nfe_budget=budget, num_steps=NUM_STEPS, step_length=arithmetic.STEP_LENGTH,
                  separator_id=arithmetic.SEP, **options)
    builders = {"beam_search": lambda: its.tokens.beam_search(fn, _process, expansions=4, **common),
                "dvts": lambda: its.tokens.dvts(fn, _process, subtree_width=4, **common),
                "rebase": lambda: its.tokens.rebase(fn, _process, **common),
                "particle_filter": lambda: its.tokens.particle_filter(fn, _process, **common)}
    for name, build in builders.items():
        if plain is None or not hasattr(its.tokens, name):
            out.append({"bench": f"{name} / plain sampling", "case": "", "value": None, "unit": "x",
                        "target": f"<= {TARGET}x", "ok": None, "note": "skipped: not exported by itscale.tokens"})
            continue
        row, nfe = _compare(f"{name} / plain sampling (same rows x length)",
                            f"Q={queries} prompts x W={width} rows, {NUM_STEPS} steps x {arithmetic.STEP_LENGTH} "
                            "tokens, process verifier",
                            {"search": (build(), prompts, NUM_STEPS),
                             "plain": (plain, jnp.repeat(prompts, width, axis=0), STEP_TOKENS)}, repeats)
        assert nfe["search"] <= nfe["plain"] == queries * budget, nfe
        out.append(row)
    return out


if __name__ == "__main__":
    from experiments.common import markdown_table

    print(markdown_table(rows(quick=True)))
