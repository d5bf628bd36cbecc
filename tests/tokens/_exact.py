"""Helpers shared by the token tests: chi-square goodness of fit and a numpy reference of truncation."""

from __future__ import annotations

import numpy as np
from scipy import stats

import itscale as its
from itscale.models.markov import all_sequences


def completion_counts(tokens: np.ndarray, prompt_len: int, length: int, vocab_size: int) -> np.ndarray:
    """Counts of each completion (lexicographic index) among rows of ``tokens`` (n, prompt_len + length)."""
    completions = np.asarray(tokens)[:, prompt_len:prompt_len + length]
    index = np.ravel_multi_index(completions.T, (vocab_size,) * length)
    return np.bincount(index, minlength=vocab_size ** length)


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``; cells with expected < min_expected are
    pooled; a sample in a zero-probability cell gives p = 0."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    probs = probs / probs.sum()
    if counts[probs <= 0].sum() > 0:
        return 0.0
    expected = counts.sum() * probs
    big = expected >= min_expected
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return float(stats.chisquare(observed, expected).pvalue)


def reference_law(logits, temperature=1.0, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """Sampling law of one logits row, written plainly (no ties assumed): temperature, top-k, top-p, min-p."""
    logits = np.asarray(logits, float)
    if temperature == 0:
        law = np.zeros_like(logits)
        law[np.argmax(logits)] = 1.0
        return law
    law = np.exp((logits - logits.max()) / temperature)
    law /= law.sum()
    if top_k is not None:
        kept = np.argsort(-law)[:top_k]
        law = np.where(np.isin(np.arange(law.size), kept), law, 0.0)
        law /= law.sum()
    if top_p is not None:
        kept, mass = [], 0.0
        for token in np.argsort(-law):
            if mass >= top_p and kept:
                break
            kept.append(token)
            mass += law[token]
        law = np.where(np.isin(np.arange(law.size), kept), law, 0.0)
        law /= law.sum()
    if min_p is not None:
        law = np.where(law >= min_p * law.max(), law, 0.0)
        law /= law.sum()
    return law


def truncated_chain(model, **controls):
    """The MarkovLM whose rows are the sampling laws of ``model``'s rows under ``controls``."""
    rows = [reference_law(row, **controls) for row in np.asarray(model.log_transition)]
    with np.errstate(divide="ignore"):
        return its.models.MarkovLM(model.log_initial, np.log(np.array(rows)))


def masked_law(law: np.ndarray, vocab_size: int, length: int, eos: int, pad: int) -> np.ndarray:
    """Law of the completions once everything after the first EOS is replaced by ``pad``."""
    masked = np.asarray(all_sequences(vocab_size, length)).copy()
    for row in masked:
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1:] = pad
    out = np.zeros(vocab_size ** length)
    np.add.at(out, np.ravel_multi_index(masked.T, (vocab_size,) * length), law)
    return out
