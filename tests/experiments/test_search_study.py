"""The width study on tiny sizes: exact targets and metrics against closed forms, NFE per cell against
the plan, skipped strategies, the digits section on tiny models (trained in a temporary cache), resuming
from the sweep files, atomic writes and the table verdicts."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common, search
from experiments.common import StudyResult
from itscale.models import digits

TINY = search.StudyConfig(tasks=(search.Task(2, 4.0, 0.9),), budgets=(50,), table_budget=50, num_queries=8,
                          num_steps=5, exact_samples=64, strategies=("plain", "bon", "smc", "no_such_yet"))
TINY_DIGITS = search.DigitsConfig(
    flow=digits.FlowConfig(width=32, depth=1, time_features=4, num_steps=30, batch_size=64),
    classifier=digits.ClassifierConfig(width=32, depth=1, num_steps=30, batch_size=64),
    budgets=(12,), num_queries=4, num_steps=3, shown=2, strategies=("plain", "bon"))


def _fail(*args, **kwargs):
    raise AssertionError("recomputed a cell that the sweep file holds")


@pytest.fixture(scope="module", autouse=True)
def missing_strategy():
    """A registry entry whose module does not exist: skipped with a note, never stored."""
    search.STRATEGIES["no_such_yet"] = search.Strategy("not written yet", "itscale.search.no_such_module",
                                                       search._by_budget("nothing"))
    original = search.KIM_STRATEGIES
    search.KIM_STRATEGIES = ("bon", "no_such_yet")
    yield
    del search.STRATEGIES["no_such_yet"]
    search.KIM_STRATEGIES = original


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    return TINY_DIGITS._replace(cache=str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, missing_strategy, tiny_digits):
    out = tmp_path_factory.mktemp("search")
    return out, search.study(out, quick=True, cfg=TINY, digits_cfg=tiny_digits)


def test_target_hits_the_requested_minor_mass_and_exact_reward():
    task = search.Task(2, 4.0, 0.9)
    target = search.make_target(task)
    assert abs(float(target.tilted.weights[-1]) - 0.9) < 1e-4
    draws = target.tilted.sample(jax.random.key(0), 50_000)
    mc = float(jnp.mean(search.quadratic_reward(target.center)(draws)))
    assert abs(mc - search.exact_reward(target)) < 0.01
    with pytest.raises(ValueError, match="minor_mass"):
        search.make_target(search.Task(2, 0.01, 0.99))


def test_metrics_of_exact_draws_are_near_zero_and_of_the_prior_are_not():
    target = search.make_target(search.Task(2, 1.0, 0.5))
    reward = search.quadratic_reward(target.center)
    n = 1500
    spread = search.mean_pairwise_distance(np.asarray(target.tilted.sample(jax.random.key(3), 500)))

    def errors(draws):
        points = np.asarray(draws)[:, None, :]
        m = search.Measure(points, np.ones((n, 1)), None, points[:, 0], 1.0, 1.0, 1)
        return search.law_errors(target, reward, m, spread)

    exact = errors(target.tilted.sample(jax.random.key(1), n))
    prior = errors(target.prior.sample(jax.random.key(2), n))
    assert exact["mode_tv"] < 0.04 and exact["mean_error"] < 0.1 and exact["cov_error"] < 0.1
    assert abs(exact["reward"] - search.exact_reward(target)) < 4 * exact["reward_se"]
    assert abs(exact["diversity"] - 1.0) < 0.1
    assert prior["mode_tv"] > 0.2 and prior["reward"] < exact["reward"] - 0.5
    assert exact["log_z_bias"] is None


def test_weighted_measure_uses_its_weights():
    target = search.make_target(search.Task(2, 1.0, 0.5))
    points = np.asarray(target.prior.means)[None]                     # one query, one point per mode
    weights = np.asarray(target.tilted.weights)[None]
    m = search.Measure(points, weights, np.array([target.log_z + 0.5]), points[:, 0], 1.0, 1.0, 3)
    out = search.law_errors(target, search.quadratic_reward(target.center), m, 1.0)
    assert out["mode_tv"] < 1e-6
    assert out["log_z_bias"] == pytest.approx(0.5) and out["log_z_rmse"] == pytest.approx(0.5)


def test_structure_and_nfe_per_cell(first_run):
    out, result = first_run
    assert isinstance(result, StudyResult)
    for plot in result.plots:
        assert (out / plot).is_file()
    (task,) = TINY.tasks
    cells = {c["strategy"]: c for c in result.figures["exact"][task.name]["cells"]}
    assert set(cells) == {"plain", "bon", "smc"}
    width = TINY.table_budget // TINY.num_steps
    assert cells["plain"]["nfe_per_query"] == TINY.num_steps
    assert cells["bon"]["nfe_per_query"] == cells["smc"]["nfe_per_query"] == width * TINY.num_steps
    assert cells["bon"]["width"] == cells["smc"]["width"] == width
    assert cells["smc"]["log_z_bias"] is not None and cells["bon"]["log_z_bias"] is None
    # searching with the reward beats plain sampling on it
    assert cells["bon"]["reward"] > cells["plain"]["reward"]
    assert "not written yet" in result.markdown and "itscale.search.no_such_module" in result.markdown
    kim = {(c["strategy"], c["base"]) for c in result.figures["kim"]["cells"]}
    assert kim == {("bon", b) for b in search.KIM_ORDER}
    stored = json.loads((out / f"search_{TINY.digest()}.json").read_text())
    assert not any("no_such_yet" in k for k in stored)


def test_digits_section(first_run, tiny_digits):
    out, result = first_run
    figures, k = result.figures["digits"], tiny_digits.num_steps
    cells = {c["strategy"]: c for c in figures["cells"]}
    assert set(cells) == {"plain", "bon"}
    width = tiny_digits.budgets[0] // k
    assert cells["plain"]["nfe_per_query"] == k and cells["plain"]["base"] == "ODE"
    assert cells["bon"]["nfe_per_query"] == width * k and cells["bon"]["width"] == width
    assert [search.digits_base(n) for n in ("bon", "zero_order", "smc", "rbf")] == ["ODE", "ODE", "SDE", "SDE"]
    # best-of-N's candidate 0 is plain sampling's own ODE sample: its reward can only be higher
    assert cells["bon"]["reward"] >= cells["plain"]["reward"] - 1e-6
    for c in cells.values():
        assert 0.0 <= c["hit_rate"] <= 1.0 and c["reward"] <= 0.0 and c["feature_distance"] >= 0.0
        assert np.asarray(c["samples"]).shape == (tiny_digits.shown, 64)
    # the held-out digits of the class are their own references: feature distance 0, and their hit
    # rate is the classifier's accuracy on them
    ref = figures["reference"]
    models = search.make_digits_setup(tiny_digits).models
    x = models.data.test_x[models.data.test_y == tiny_digits.target]
    assert ref["feature_distance"] == pytest.approx(0.0, abs=1e-3) and ref["count"] == x.shape[0]
    hits = np.argmax(np.asarray(models.classifier(x)), axis=-1) == tiny_digits.target
    assert ref["hit_rate"] == pytest.approx(hits.mean())
    assert list(pathlib.Path(tiny_digits.cache, "digits").glob("*.msgpack"))        # trained into the tmp cache
    assert (out / figures["grid"]).is_file() and f"]({figures['grid']})" in result.markdown
    assert "| best-of-N | ODE |" in result.markdown


def test_rerun_resumes_from_sweep(first_run, monkeypatch, tiny_digits):
    out, result = first_run
    for name in ("compute_cell", "make_setup", "run_strategy", "compute_digits_cell", "make_digits_setup"):
        monkeypatch.setattr(search, name, _fail)
    again = search.study(out, quick=True, cfg=TINY, digits_cfg=tiny_digits)
    assert again.markdown == result.markdown
    assert again.figures == json.loads(json.dumps(result.figures))


def test_main_writes_atomically(first_run, monkeypatch, tmp_path, tiny_digits):
    out, _ = first_run
    monkeypatch.setattr(search, "config", lambda quick: TINY)
    monkeypatch.setattr(search, "digits_config", lambda quick: tiny_digits)
    search.main(["--out", str(out)])
    assert (out / "search.md").read_text().startswith("# Width axis")
    assert "exact" in json.loads((out / "search.json").read_text())
    assert not list(out.glob(".*.tmp"))

    target = tmp_path / "kept.md"                          # an interrupted write leaves the old file whole
    common.write_text_atomic(target, "old")

    def broken(src, dst):
        raise OSError("interrupted")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        common.write_text_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.md"]


@pytest.mark.parametrize("values, verdict", [
    ({"VP-SDE": (1.0, 0.01), "linear-SDE": (0.5, 0.01), "linear-ODE": (0.0, 0.01)}, "holds"),
    ({"VP-SDE": (0.0, 0.01), "linear-SDE": (0.5, 0.01), "linear-ODE": (0.4, 0.01)}, "reversed"),
    ({"VP-SDE": (0.51, 0.1), "linear-SDE": (0.5, 0.1), "linear-ODE": (0.49, 0.1)}, "tie (within 2 SE)"),
    ({"VP-SDE": (0.5, 0.1)}, "n/a"),
])
def test_ordering_verdict(values, verdict):
    assert search.ordering_verdict(values, search.KIM_ORDER) == verdict


def test_best_verdict():
    assert search.best_verdict({"rbf": (1.0, 0.01), "bon": (0.0, 0.01)}, "rbf") == "best"
    assert search.best_verdict({"rbf": (1.0, 0.5), "bon": (0.9, 0.5)}, "rbf") == "tied best"
    assert search.best_verdict({"rbf": (0.0, 0.01), "bon": (1.0, 0.01)}, "rbf") == "not best"
    rows = search.kim_rows([{"strategy": "bon", "base": b, "reward": r, "reward_se": 0.01}
                            for b, r in zip(search.KIM_ORDER, (1.0, 0.5, 0.0))], ["bon"])
    assert rows[0]["VP-SDE > linear-SDE > linear-ODE"] == "holds"
    assert "RBF not run" in rows[-1]["VP-SDE > linear-SDE > linear-ODE"]
