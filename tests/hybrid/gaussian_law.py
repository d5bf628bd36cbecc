"""How far samples are from a Gaussian law, in standard errors: the exactness check of the continuous
sequence samplers."""

import math

import numpy as np


def gaussian_discrepancy(x, mean, cov) -> tuple[float, float, float]:
    """(max |mean error| / SE, max |cov error| / SE, log-likelihood gap / SE) of samples ``x`` (n, ...)
    flattened per sample against N(``mean``, ``cov``); the gap is the mean log-density of the samples
    minus its expectation −½ n (1 + log 2π) − ½ log det cov."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    mean, cov = np.asarray(mean, np.float64).reshape(-1), np.asarray(cov, np.float64)
    mean_z = np.max(np.abs(flat.mean(0) - mean) / np.sqrt(np.diag(cov) / len(x)))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(x))
    cov_z = np.max(np.abs(np.cov(flat.T) - cov) / cov_se)
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, (flat - mean).T)
    half_log_det = np.sum(np.log(np.diag(chol)))
    log_probs = -0.5 * np.sum(white**2, axis=0) - half_log_det - 0.5 * len(mean) * math.log(2 * math.pi)
    expected = -0.5 * len(mean) * (1.0 + math.log(2 * math.pi)) - half_log_det
    return mean_z, cov_z, (log_probs.mean() - expected) / (log_probs.std() / math.sqrt(len(x)))
