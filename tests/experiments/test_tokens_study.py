"""The sequence-axis study on a tiny configuration: output structure, NFE per point against each
strategy's declared budget, best-of-N with the exact verifier against plain sampling, resuming from
the sweep file, and the arithmetic model's deterministic training and checkpoint."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import itscale as its
from experiments import arithmetic_model, tokens
from experiments.arithmetic_model import ModelConfig
from experiments.common import StudyResult
from itscale.verifiers import arithmetic

# 300 training steps: plain sampling is right about 9% of the time, best-of-4 about 35% (32 problems), so
# "best-of-N beats plain sampling" is a claim the test can check (at 150 steps, ~1%, it was a coin toss)
TINY_MODEL = ModelConfig(max_digits=2, min_digits=1, width=32, depth=1, num_heads=2, train_steps=300,
                         batch_size=32, warmup_steps=5)
SEARCH = "beam_search" if hasattr(its.tokens, "beam_search") else None
TINY = tokens.StudyConfig(model=TINY_MODEL, num_problems=32, widths=(4,), search_widths=(4,),
                          coverage_samples=8,
                          strategies=("plain", "bon_exact", "majority") + ((SEARCH,) if SEARCH else ()))


def _fail(*args, **kwargs):
    raise AssertionError("recomputed a point that the sweep file holds")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens")
    return out, tokens.study(out, quick=True, cfg=TINY)


def test_structure(first_run):
    out, result = first_run
    assert isinstance(result, StudyResult)
    for plot in result.plots:
        assert (out / plot).is_file()
    names = {(p["strategy"], p["width"]) for p in result.figures["points"]}
    expected = {("plain", 1), ("bon_exact", 4), ("majority", 4)} | ({(SEARCH, 4)} if SEARCH else set())
    assert names == expected
    for p in result.figures["points"]:
        assert 0.0 <= p["accuracy"] <= 1.0
        assert tokens.STRATEGIES[p["strategy"]].label in result.markdown
    coverage = result.figures["coverage"]
    assert coverage["k"][0] == 1 and coverage["k"][-1] == TINY.coverage_samples
    assert all(np.diff(coverage["pass_at_k"]) >= -1e-12)          # coverage never falls with k
    stored = json.loads((out / f"tokens_{TINY.digest()}.json").read_text())
    assert {f"{s}|width={w}" for s, w in names} <= set(stored)


def test_nfe_matches_declared_budget(first_run):
    _, result = first_run
    per_sample = TINY_MODEL.prompt_len + TINY_MODEL.completion_len
    points = {p["strategy"]: p for p in result.figures["points"]}
    assert points["plain"]["nfe_per_problem"] == per_sample
    for name in ("bon_exact", "majority"):     # one best-of-N run: N samples of P + C positions each
        assert points[name]["nfe_per_problem"] == points[name]["declared_nfe_per_problem"] == 4 * per_sample
        assert points[name]["nfe"] == 4 * per_sample * TINY.num_problems
    if SEARCH:
        p = points[SEARCH]
        bound = TINY_MODEL.prompt_len + 4 * TINY_MODEL.num_steps * arithmetic.STEP_LENGTH
        assert p["declared_nfe_per_problem"] == bound == p["nfe_budget_per_problem"]
        assert TINY_MODEL.prompt_len < p["nfe_per_problem"] <= bound
        assert p["nfe"] == p["nfe_per_problem"] * TINY.num_problems


def test_best_of_n_exact_verifier_beats_plain_sampling(first_run):
    _, result = first_run
    points = {p["strategy"]: p for p in result.figures["points"]}
    bon = points["bon_exact"]
    # the exact verifier keeps a correct candidate whenever there is one
    assert bon["accuracy"] == bon["coverage_of_candidates"]
    assert bon["accuracy"] > points["plain"]["accuracy"] > 0
    assert bon["accuracy"] >= points["majority"]["accuracy"]


def test_rerun_resumes_from_sweep(first_run, monkeypatch):
    out, result = first_run
    for name in ("compute_point", "compute_coverage", "compute_training", "make_setup"):
        monkeypatch.setattr(tokens, name, _fail)
    again = tokens.study(out, quick=True, cfg=TINY)
    assert again.markdown == result.markdown
    assert again.figures == result.figures


def test_model_training_is_deterministic_and_cached(first_run, tmp_path, monkeypatch):
    out, _ = first_run                      # the study trained TINY_MODEL into out (one checkpoint file)
    assert [p.name for p in out.glob("*.msgpack")] == [arithmetic_model.checkpoint_path(out, TINY_MODEL).name]
    again = arithmetic_model.train_or_load(tmp_path, TINY_MODEL)        # same config, fresh directory
    assert not again.loaded
    monkeypatch.setattr(arithmetic_model, "train", _fail)
    cached = arithmetic_model.train_or_load(out, TINY_MODEL)
    assert cached.loaded and cached.losses == again.losses
    for x, y in zip(jax.tree.leaves(nnx.state(again.model)), jax.tree.leaves(nnx.state(cached.model))):
        np.testing.assert_array_equal(x, y)
