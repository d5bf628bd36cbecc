"""The sequences study on tiny sizes: exact samplers sit at the noise floor, MDLM's factorisation error
shrinks with steps, diffusion forcing's log-likelihood gap shrinks with levels; the sweep resumes from
its file and writes atomically."""

import json

import jax

import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from experiments import common, sequence_models, sequences
from itscale.models.markov import all_sequences

TINY = sequences.StudyConfig(length=3, samples=3000, steps=(1, 3), ssm_length=2, ssm_samples=1500,
                             levels=(1, 8), uncertainties=(0.0, 1.0),
                             samplers=("mdlm", "maskgit_random", "first_hitting", "ar"), forcing_denoisers=("exact",),
                             arith_digits=1, arith_steps=(2,), arith_samplers=("mdlm", "ar"), arith_width=16,
                             arith_train_steps=20, arith_data=256, arith_problems=64)


def test_exact_law_and_bos_chain_agree_with_the_chain():
    exact = sequences.exact_chain(TINY)
    seqs = np.asarray(all_sequences(TINY.vocab, TINY.length))
    np.testing.assert_allclose(exact.law, np.exp(np.asarray(exact.model.sequence_log_prob(jnp.asarray(seqs)))),
                               rtol=1e-5)
    bos = sequences.with_bos(exact.model)
    prompt = jnp.array([TINY.vocab], jnp.int32)
    lifted = np.exp(np.asarray(bos.completion_log_probs(prompt, TINY.length)))
    index = np.ravel_multi_index(seqs.T, (TINY.vocab + 1,) * TINY.length)
    np.testing.assert_allclose(lifted[index], exact.law, rtol=1e-5)


def test_quick_study_numbers_resume_and_atomic_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("ITSCALE_CACHE", str(tmp_path / "cache"))
    result = sequences.study(tmp_path, quick=True, cfg=TINY)
    figures = result.figures
    floor = figures["floor"]["tv"]
    tv = {(p["sampler"], p["steps"]): p["tv"] for p in figures["tokens"]}
    L = TINY.length
    assert tv[("first_hitting", L)] < 2.5 * floor and tv[("ar", L)] < 2.5 * floor
    assert tv[("maskgit_random", L)] < 2.5 * floor
    assert tv[("mdlm", 1)] > 4 * floor and tv[("mdlm", 3)] < 0.8 * tv[("mdlm", 1)]
    nfe = {(p["sampler"], p["steps"]): p["nfe_per_sample"] for p in figures["tokens"]}
    assert nfe[("mdlm", 3)] == 3 and nfe[("ar", L)] == L + 1
    for fraction in TINY.uncertainties:
        gaps = [abs(p["loglik_gap"]) for p in figures["forcing"] if p["u_over_S"] == fraction]
        assert gaps[1] < 0.7 * gaps[0], gaps
    auto = [p for p in figures["forcing"] if p["u_over_S"] == 1.0]
    assert [p["nfe_per_sample"] for p in auto] == [lv * TINY.ssm_length for lv in TINY.levels]
    assert all((tmp_path / name).exists() for name in result.plots)
    arith = {(p["sampler"], p["steps"]): p for p in figures["arith"]}
    assert set(arith) == {("mdlm", 2), ("ar", 13)}                  # AR: one token per step, the whole completion
    assert all(0 <= p["accuracy"] <= 1 for p in arith.values()) and arith[("mdlm", 2)]["nfe_per_sample"] == 2
    assert arith[("ar", 13)]["nfe_per_sample"] >= 13
    assert "(c) Arithmetic" in result.markdown and figures["arith_denoiser"]["params"] > 0
    assert "| MDLM |" in result.markdown
    with pytest.raises(ValueError, match="unknown samplers"):
        sequences.study(tmp_path / "bad", quick=True, cfg=TINY._replace(samplers=("nope",)))
    assert not (tmp_path / "bad").exists()

    stored = tmp_path / f"{sequences.NAME}_{TINY.digest()}.json"
    points = json.loads(stored.read_text())
    assert len(points) == 1 + len(figures["tokens"]) + len(figures["forcing"]) + 1 + len(figures["arith"])

    # Resume: a dropped point is recomputed, the others are read back without running anything.
    dropped = "tokens|mdlm|K=3"
    del points[dropped]
    common.write_json_atomic(stored, points)
    calls = []
    original = sequences.token_point
    monkeypatch.setattr(sequences, "token_point", lambda *a: calls.append(a[2:4]) or original(*a))
    monkeypatch.setattr(sequences, "forcing_point", lambda *a: (_ for _ in ()).throw(AssertionError("rerun")))
    monkeypatch.setattr(sequences, "arith_point", lambda *a: (_ for _ in ()).throw(AssertionError("rerun")))
    again = sequences.study(tmp_path, quick=True, cfg=TINY)
    assert calls == [("mdlm", 3)]
    assert json.loads(stored.read_text()).keys() == set(points) | {dropped}
    assert again.figures["floor"] == figures["floor"]
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.png"))


def test_trained_denoiser_learns_the_exact_conditionals(tmp_path, monkeypatch):
    monkeypatch.setenv("ITSCALE_CACHE", str(tmp_path / "cache"))
    cfg = TINY._replace(denoiser_steps=500, denoiser_width=32, denoiser_data=4000)
    exact = sequences.exact_chain(cfg)
    cached = sequence_models.trained_denoiser(cfg, exact)
    assert cached.source == "missing" and cached.path.parent == tmp_path / "cache"
    quality = sequence_models.denoiser_quality(cfg, exact, cached)
    assert quality["losses"][-1] < quality["losses"][0]
    assert quality["kl"] < 0.02                       # nats per masked position from the forward-backward law
    floor = sequences.token_floor(cfg, exact)["tv"]
    k = cfg.steps[-1]                                 # the learned denoiser's samples track the exact one's
    learned = sequences.token_point(cfg, exact, "mdlm_trained", k, lambda: cached.model)
    assert abs(learned["tv"] - sequences.token_point(cfg, exact, "mdlm", k)["tv"]) < 2 * floor, learned
    assert sequence_models.trained_denoiser(cfg, exact).source == "cache"


def test_trained_sequence_denoiser_approaches_the_posterior_mean(tmp_path, monkeypatch):
    monkeypatch.setenv("ITSCALE_CACHE", str(tmp_path / "cache"))
    cfg = TINY._replace(ssm_denoiser_steps=1000, ssm_denoiser_width=64)
    with jax.enable_x64(True):
        ssm, path = sequences.state_space(), its.paths.linear()
    cached = sequence_models.trained_ssm_denoiser(cfg, ssm, path)
    quality = sequence_models.ssm_denoiser_error(cfg, ssm, path, cached)
    assert quality["losses"][-1] < 0.6 * quality["losses"][0]
    assert quality["relative_error"] < 0.05          # of the irreducible error E|x - E[x|z]|^2
    gaps = [sequences.forcing_point(cfg, levels, 0.0, "trained", lambda: cached.model)["loglik_gap"]
            for levels in (1, 8)]
    assert abs(gaps[1]) < 0.7 * abs(gaps[0]), gaps  # more refinement steps still help with the learned model
