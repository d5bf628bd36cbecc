"""The scaling study (experiments.scaling) on tiny models: its four sections with verdict columns, the
headline rows, finite figures, resuming from the sweep file, and the linear-cost fit of the refinement axis.

The tiny models are initialised, not trained (training and evaluating them costs more than this test's
time budget; the study's code paths do not depend on the weights' quality)."""

import dataclasses
import json
import math
import pathlib
import time

import numpy as np
import pytest

from experiments import scaling
from experiments import scaling_models as sm
from itscale.models import digits

LM = sm.ModelConfig(max_digits=2, min_digits=1, width=8, depth=1, num_heads=2, train_steps=4, batch_size=8,
                    warmup_steps=1)
FLOW = digits.FlowConfig(width=8, depth=1, num_steps=4, batch_size=32)
MODELS = sm.ScalingConfig(lm_small=LM, lm_large=LM._replace(width=32), flow_small=FLOW,
                          flow_large=dataclasses.replace(FLOW, width=64),
                          verifier=sm.VerifierConfig(lm=LM, num_train=16, num_heldout=8, width=8, depth=1,
                                                     train_steps=2, batch_size=8),
                          eval_per_digits=4)
CLASSIFIER = digits.ClassifierConfig(width=16, depth=1, num_steps=2)
CFG = scaling.config(tiny=True)._replace(models=MODELS, classifier=CLASSIFIER)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def tiny_models(tmp: pathlib.Path) -> scaling.Models:
    def trained(build, config):
        model = build(config)
        from experiments import model_cache
        return sm.Trained(model, config, model_cache.num_params(model), np.ones(1), {}, 0.0, tmp, "initialised")

    builders = sm._builders(MODELS)
    bundle = sm.ScalingModels(**{name: trained(*builders[name]) for name in builders})
    return scaling.Models(bundle, digits.classifier_model(CLASSIFIER), digits.load_digits(CLASSIFIER.split))


def _finite(value) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def test_linear_fit_of_refinement_flops_is_linear(models):
    axis = scaling.cost_axis(models, CFG, "refinement")
    points = axis["points"]
    fit = scaling.linear_fit([p["iterations"] for p in points], [p["flops"] for p in points])
    assert fit["r2"] == pytest.approx(1.0, abs=1e-6) and fit["slope"] > 0
    assert [p["nfe"] for p in points] == [n * CFG.cost_batch for n in CFG.cost_steps]
    # the rolled scan's cost analysis does not grow with the steps; the unrolled one does
    assert len({p["flops_rolled"] for p in points}) == 1
    assert points[-1]["flops"] > 2 * points[0]["flops"]
    line = scaling.linear_fit([1, 2, 3, 4], [1.0, 3.0, 2.0, 5.0])
    assert 0 < line["r2"] < 0.98


def test_study_sections_headline_and_resume(tmp_path, models):
    start = time.perf_counter()
    result = scaling.study(tmp_path / "out", quick=True, cfg=CFG, models=models)
    first = time.perf_counter() - start
    for section in ("### 1. Linear cost", "### 2. Power law", "### 3. Small vs large at matched FLOPs",
                    "### 4. Adaptive allocation"):
        assert section in result.markdown
    header_lines = [line for line in result.markdown.splitlines() if line.startswith("| ")
                    and "verdict" in line.split("|")[-2]]
    assert len(header_lines) >= 5                 # linear cost, power law, matched LM, digits? , adaptive
    headline = result.figures["headline"]
    assert len(headline) == 4
    assert all(set(row) == {"claim", "measured", "holds"} and isinstance(row["holds"], bool) for row in headline)
    assert _finite(result.figures["linear_cost"]["fits"])
    assert _finite([r["FLOPs R²"] for r in result.figures["linear_cost"]["table"]])
    for plot in result.plots:
        assert (tmp_path / "out" / plot).stat().st_size > 0
    assert [r["model"] for r in result.figures["models"]] == list(scaling.sm.ScalingModels._fields)
    assert "### Models" in result.markdown
    runs = {r["plan"]: r for r in result.figures["adaptive"]["telemetry"]["runs"]}
    assert set(runs) == {"adaptive", "uniform"}
    for run in runs.values():        # exact buckets: the compiled program ran the allocated candidates only
        assert run["NFE executed"] == run["NFE allocated"] > 0 and 0 <= run["accuracy"] <= 1
    json.dumps(result.figures)
    sweep_file = tmp_path / "out" / f"scaling_{CFG.digest()}.json"
    stored = json.loads(sweep_file.read_text())
    assert {"cost|refinement", "cost|tokens", "cost|particles", "pool", "matched|digits"} <= set(stored)
    mtime = sweep_file.stat().st_mtime_ns

    # a rerun resumes from the sweep: no model is loaded, nothing is recomputed, the file is untouched
    def no_models():
        raise AssertionError("the rerun needed the models")

    start = time.perf_counter()
    again = scaling.study(tmp_path / "out", quick=True, cfg=CFG, models=no_models)
    assert time.perf_counter() - start < first
    assert sweep_file.stat().st_mtime_ns == mtime
    assert again.markdown == result.markdown
    assert again.figures["headline"] == headline


def test_routing_sends_hard_problems_to_the_large_model_after_the_probe():
    # easy problems: every sample right (agreement 1); hard ones: every sample a different wrong answer;
    # the large LM is right everywhere. Costs (kFLOP): a sample 10 (15 with the verifier), the large LM 100.
    q, n, k = 40, 8, 4
    truth = np.arange(q)
    hard = (np.arange(q) // 2) % 2 == 1                    # both halves (even / odd problems) hold both kinds
    answers = np.where(hard[:, None], 1000 + np.arange(q * n).reshape(q, n), truth[:, None])
    pool = {"answers": answers, "truth": truth, "scores": np.zeros((q, n)), "correct": (answers == truth[:, None])}
    info = {"cost": {"majority_vote": 10e3, "best_of_n": 15e3}, "f_large": 100e3, "large": np.ones(q, bool)}
    cfg = scaling.StudyConfig(probe=k, num_tiers=2, pool_samples=n, num_budgets=40)
    routed = scaling.adaptive(pool, info, cfg, route=True)
    best = min((c for c in routed["curve"] if c["accuracy"] == 1.0), key=lambda c: c["kflops"])
    assert best["plan_option"] == ["majority_vote", scaling.LARGE] and best["plan_width"] == [k, k]
    assert best["kflops"] == pytest.approx((k * 10 + (k * 10 + 100)) / 2)   # the probe is paid on hard ones too
    large_for_all = [u for u in routed["uniform"] if u["option"] == scaling.LARGE]
    assert large_for_all and large_for_all[0]["accuracy"] == 1.0 and large_for_all[0]["kflops"] == 100
    assert large_for_all[0]["saving"] == pytest.approx(100 / 90)
    plain = scaling.adaptive(pool, info, cfg)                # without routing the hard half stays wrong
    assert max(c["accuracy"] for c in plain["curve"]) == 0.5
