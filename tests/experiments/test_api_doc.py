"""docs/api.md is what the generator makes from the current docstrings."""

from experiments import api_doc


def test_the_api_page_is_current():
    assert api_doc.OUT.read_text() == api_doc.render(), "run `python -m experiments.api_doc`"


def test_the_api_page_names_the_contract():
    page = api_doc.render()
    for name in ("run(sampler, key, x, *, num_steps, params=None, trace=None)", "`smc(", "`rollout(", "`bind(",
                 "`from_penzai(", "`ode(", "`sde("):
        assert name in page, name
