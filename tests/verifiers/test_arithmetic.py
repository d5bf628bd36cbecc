"""Arithmetic task: worked solutions, exact outcome checker, answer extractor, process verifier and the
deterministic noisy verifier, on generated problems and hand-made correct and incorrect examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itscale.verifiers import arithmetic as ar
from itscale.verifiers import noisy_verifier

# jitted once per module: op-by-op (eager) calls compile every primitive and are slow
extract_answer = jax.jit(ar.extract_answer)
is_correct = jax.jit(ar.is_correct)
parse_prompt = jax.jit(ar.parse_prompt)
prefix_correct = jax.jit(ar.prefix_correct, static_argnums=1)
process_reward = jax.jit(ar.process_reward, static_argnums=1)
format_prompt = jax.jit(ar.format_prompt, static_argnums=2)
worked_solution = jax.jit(ar.worked_solution, static_argnums=2)


@pytest.fixture(scope="module")
def problems():
    return jax.jit(ar.sample_problems, static_argnums=(1, 2), static_argnames="min_digits")(
        jax.random.key(0), 256, 4, min_digits=1)


def test_worked_solution_text():
    a, b = jnp.array([12, 0, 99, 5]), jnp.array([39, 0, 1, 1234])
    assert ar.decode(format_prompt(a, b, 4)) == ["12+39=", "0+0=", "99+1=", "5+1234="]
    assert ar.decode(worked_solution(a, b, 4)) == [
        "2+9+0=11;1+3+1=05;#51.",
        "0+0+0=00;#0.",
        "9+1+0=10;9+0+1=10;#100.",
        "5+4+0=09;0+3+0=03;0+2+0=02;0+1+0=01;#1239.",
    ]
    prompts = format_prompt(a, b, 4)
    assert prompts.shape == (4, ar.prompt_length(4)) and int(prompts[0, 0]) == ar.PAD   # left-padded
    assert worked_solution(a, b, 4).shape == (4, ar.completion_length(4))


def test_encode_decode_round_trip():
    text = "12+39=2+9+0=11;1+3+1=05;#51."
    np.testing.assert_array_equal(ar.encode(text)[:6], [1, 2, ar.PLUS, 3, 9, ar.EQUALS])
    assert ar.decode(ar.encode(text)) == text
    batch = ar.encode(["1+2=", "12+3="], align="right")
    assert batch.shape == (2, 5) and ar.decode(batch, keep_pad=True) == ["_1+2=", "12+3="]
    with pytest.raises(ValueError, match="vocabulary"):
        ar.encode("1-2=")


def test_generated_problems_are_correct_and_well_formed(problems):
    a, b = np.asarray(problems.a), np.asarray(problems.b)
    assert a.min() >= 0 and a.max() < 10 ** 4 and len(set(a.tolist())) > 100
    np.testing.assert_array_equal(parse_prompt(problems.prompts), (a, b))
    np.testing.assert_array_equal(extract_answer(problems.completions), a + b)
    assert bool(jnp.all(is_correct(problems.prompts, problems.completions)))
    texts = ar.decode(problems.tokens)
    for i in range(0, 256, 37):                                 # against Python string arithmetic
        steps, answer = texts[i].split("=", 1)[1].split("#")
        assert answer == f"{a[i] + b[i]}."
        assert len(steps.split(";")) - 1 == max(len(str(a[i])), len(str(b[i])))
    check = prefix_correct(problems.tokens, 4)
    assert bool(jnp.all(check.correct == check.completed))
    num_segments = np.maximum(np.char.str_len(a.astype(str)), np.char.str_len(b.astype(str))) + 1
    np.testing.assert_array_equal(check.completed.sum(1), num_segments)
    np.testing.assert_array_equal(process_reward(problems.tokens, 4), 1.0)


def _python_working(a: int, b: int) -> str:
    """The worked solution by Python string arithmetic (the reference for the vectorized builders)."""
    steps, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        da, db = a // 10 ** i % 10, b // 10 ** i % 10
        out = (da + db + carry) // 10
        steps.append(f"{da}+{db}+{carry}={out}{(da + db + carry) % 10};")
        carry = out
    return "".join(steps) + f"#{a + b}."


@pytest.mark.parametrize("max_digits", [1, 3, ar.MAX_DIGITS])
def test_prompts_and_workings_match_python_arithmetic(max_digits):
    problems = ar.sample_problems(jax.random.key(max_digits), 200, max_digits)
    a, b = np.asarray(problems.a).tolist(), np.asarray(problems.b).tolist()
    assert ar.decode(problems.prompts) == [f"{x}+{y}=" for x, y in zip(a, b)]
    assert ar.decode(problems.completions) == [_python_working(x, y) for x, y in zip(a, b)]
    edge = 10 ** max_digits - 1                                   # every place carries; widest answer
    assert ar.decode(worked_solution(jnp.array([edge, 0]), jnp.array([edge, 0]), max_digits)) == [
        _python_working(edge, edge), "0+0+0=00;#0."]


def test_process_reward_is_every_completed_step_correct(problems):
    """The fast process reward equals all(correct | ~completed) of prefix_correct's step verdicts on
    workings corrupted at random places, cut at random lengths, with text after EOS, malformed prompts
    and operands wider than max_digits."""
    rng = np.random.default_rng(0)
    tokens = np.array(problems.tokens)
    rows, length = tokens.shape
    prompt_len = problems.prompts.shape[1]
    corrupt = rng.random((rows, length)) < rng.choice([0.0, 0.02, 0.1], size=(rows, 1))
    corrupt[:, :prompt_len] = False
    tokens = np.where(corrupt, rng.integers(0, ar.VOCAB_SIZE, (rows, length)), tokens)
    cut = rng.integers(prompt_len, length + 1, rows)
    tokens = np.where(np.arange(length) < cut[:, None], tokens, ar.PAD)
    tokens[::17, prompt_len - 3] = ar.PAD                          # a PAD inside an operand: malformed
    tokens[5::23, :prompt_len] = np.asarray(ar.format_prompt(jnp.full(1, 12345), jnp.full(1, 6), 4))[0]
    zero = np.asarray(worked_solution(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), 4))[0]
    tokens[::34, prompt_len:] = zero                               # the working of 0 + 0 after a malformed
    tokens[5::46, prompt_len:] = zero                              # or too wide prompt: still wrong
    check = prefix_correct(jnp.asarray(tokens), 4)                   # 12345 is wider than max_digits=4
    expected = np.all(np.asarray(check.correct) | ~np.asarray(check.completed), axis=1)
    np.testing.assert_array_equal(process_reward(jnp.asarray(tokens), 4), expected.astype(np.float32))
    assert 0.2 < expected.mean() < 0.8


def test_checker_and_extractor_on_hand_made_completions():
    prompts = ar.encode(["12+39="] * 7, align="right")
    completions = ar.encode([
        "2+9+0=11;1+3+1=05;#51.",     # correct
        "2+9+0=01;1+3+0=04;#41.",     # forgot the carry: wrong answer
        "#51.",                       # right answer, no working: the outcome checker accepts it
        "2+9+0=11;1+3+1=05;#51",      # no EOS
        "2+9+0=11;1+3+1=05;51.",      # no answer marker
        "#5+1.",                      # not a number
        "#051.__#7.",                 # leading zero is read as 51; text after EOS is ignored
    ], align="left")
    np.testing.assert_array_equal(extract_answer(completions), [51, 41, 51, -1, -1, -1, 51])
    np.testing.assert_array_equal(is_correct(prompts, completions), [1, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(jax.jit(ar.outcome_reward)(prompts, completions), [1, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(parse_prompt(ar.encode(["1+=", "12+39", "+3=", "4+5=", "1_2+3=", "12+3_4="],
                                                         align="right")),
                                  ([-1, -1, -1, 4, -1, -1], [-1, -1, -1, 5, -1, -1]))   # no PAD inside a number


def test_process_verifier_on_hand_made_prefixes():
    full = ar.encode([
        "12+39=2+9+0=11;1+3+1=05;#51.",   # all three segments right
        "12+39=2+9+0=11;1+3+1=05;",       # partial: two steps, answer not yet written
        "12+39=2+9+0=11;1+3+",            # partial: one step done, second in progress
        "12+39=2+9+0=01;1+3+0=04;#41.",   # first step wrong: every later step is wrong too
        "12+39=2+9+0=11;1+3+0=04;#41.",   # second step wrong
        "12+39=2+9+0=11;1+3+1=05;#52.",   # working right, answer wrong
        "12+39=",                         # nothing generated yet
        "__7+5=7+5+0=12;#12.",            # left-padded prompt, one digit step
        "__7+5=7+5+0=12;#12.#12.",        # text after EOS is not a step
    ], align="left")
    check = prefix_correct(full, 2)
    np.testing.assert_array_equal(check.completed, [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1],
                                                    [1, 1, 1], [0, 0, 0], [1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(check.correct, [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0],
                                                  [1, 1, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(process_reward(full, 2), [1, 1, 1, 0, 0, 0, 1, 1, 1])


def test_process_verifier_width_does_not_change_verdicts_in_range(problems):
    """The working is built max_digits wide: on in-range problems the verdicts of every step equal
    those of the widest working (corrupted completions included); wider operands are out of scope."""
    prompts, completions = problems.prompts, problems.completions
    corrupt = (jnp.arange(completions.shape[1]) % 7 == 3)[None] & (jnp.arange(completions.shape[0]) % 2 == 1)[:, None]
    tokens = jnp.concatenate([prompts, jnp.where(corrupt, (completions + 1) % 10, completions)], axis=1)
    narrow, wide = prefix_correct(tokens, 4), prefix_correct(tokens, ar.MAX_DIGITS)
    np.testing.assert_array_equal(narrow.correct, wide.correct[:, :5])
    np.testing.assert_array_equal(narrow.completed, wide.completed[:, :5])
    assert 0 < int(narrow.correct.sum()) < narrow.correct.size
    check = prefix_correct(ar.encode(["1234+5=4+5+0=09;3+0+0=03;"], align="left"), 3)
    assert not np.any(check.correct) and np.any(check.completed)


@jax.jit
def noisy_reward(seed, noise, prompts, completions):
    return noisy_verifier(ar.outcome_reward, seed, noise)(prompts, completions)


def test_noisy_verifier_is_deterministic_per_sequence_and_seed(problems):
    prompts, completions = problems.prompts[:64], problems.completions[:64]
    first = noisy_reward(7, 0.5, prompts, completions)
    np.testing.assert_array_equal(first, noisy_reward(7, 0.5, prompts, completions))   # same bits
    same = lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)  # noqa: E731  (float rounding)
    same(noisy_reward(jax.random.key(7), 0.5, prompts, completions), first)        # int seed == its key
    order = np.random.default_rng(0).permutation(64)
    same(noisy_reward(7, 0.5, prompts[order], completions[order]), first[order])   # order preserving
    same(noisy_reward(7, 0.5, prompts[:5], completions[:5]), first[:5])            # batch independent
    assert not np.any(np.isclose(noisy_reward(8, 0.5, prompts, completions), first))
    z = (first - 1.0) / 0.5                                     # all correct: reward 1 + noise * z
    assert abs(z.mean()) < 0.4 and 0.7 < z.std() < 1.3
    np.testing.assert_array_equal(noisy_reward(7, 0.0, prompts, completions), 1.0)
    # another completion of the same problem with the same outcome gets another perturbation
    wrong = completions.at[:, 0].set((completions[:, 0] + 1) % 10)
    np.testing.assert_array_equal(is_correct(prompts, wrong), True)
    assert not np.any(np.isclose(noisy_reward(7, 0.5, prompts, wrong), first))


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_digits"):
        ar.sample_problems(jax.random.key(0), 4, ar.MAX_DIGITS + 1)
    with pytest.raises(ValueError, match="min_digits"):
        ar.sample_problems(jax.random.key(0), 4, 2, min_digits=3)
    with pytest.raises(TypeError, match="batch_size"):
        ar.sample_problems(jax.random.key(0), 4.0, 2)
    with pytest.raises(TypeError, match="integer"):
        extract_answer(jnp.zeros((2, 3)))
