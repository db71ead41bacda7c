"""Statistics for how much of a hyperparameter search's best result is selection luck.

* ``probability_of_backtest_overfitting``: combinatorially symmetric cross-validation (CSCV) of
  Bailey, Borwein, López de Prado & Zhu (2017), "The Probability of Backtest Overfitting".
* ``probabilistic_sharpe_ratio`` / ``deflated_sharpe_ratio``: Bailey & López de Prado (2014),
  "The Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting and
  Non-Normality".

Every Sharpe ratio in this module is **per period and not annualised**: mean(r) / std(r, ddof=1)
of the per-period returns r. ``cappuccino.evaluation.metrics`` reports annualised Sharpe ratios;
divide those by sqrt(periods_per_year) before passing them here (hourly bars: sqrt(8760)), and
pass the number of periods (bars) the Sharpe ratio was measured on as ``n_observations``. The
PSR/DSR formula is not scale-free: an annualised Sharpe with a per-bar ``n_observations``
would overstate the confidence by a factor of about sqrt(periods_per_year) in the z-score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import NormalDist

import numpy as np

EULER_MASCHERONI = 0.5772156649015329

# A std at most this fraction of a trial's largest absolute return is the rounding noise of a
# constant series (np.std([0.1] * 3) is 1e-17, not 0), so it counts as zero.
_ZERO_STD_RTOL = 1e-12

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class PBOResult:
    """Outcome of CSCV over C(S, S/2) in-sample / out-of-sample splits.

    ``pbo`` is the share of splits whose in-sample best trial ranks in the bottom half out of
    sample (logit <= 0). ``is_sharpe`` / ``oos_sharpe`` are, per split, the in-sample best
    trial's Sharpe in sample and out of sample (the paper's performance-degradation pairs).
    """

    pbo: float
    logits: np.ndarray  # (C,)
    n_combinations: int
    is_sharpe: np.ndarray  # (C,)
    oos_sharpe: np.ndarray  # (C,)


def probability_of_backtest_overfitting(performance: np.ndarray, n_partitions: int = 16) -> PBOResult:
    """Probability that the trial picked for its in-sample Sharpe is below median out of sample.

    ``performance`` is a (T, N) matrix: T periods (rows, in time order) by N trials (for
    cappuccino, Optuna trials), each entry one period's return. The rows are cut into S =
    ``n_partitions`` contiguous blocks with ``np.array_split`` (sizes differ by at most one when
    S does not divide T); each of the C(S, S/2) ways to pick S/2 blocks as in-sample (IS), the
    other S/2 being out-of-sample (OOS), is one split. Per split, the trial with the best IS
    Sharpe (mean / std with ddof=1; a zero std gives Sharpe 0; ties go to the lowest column) is
    ranked among all trials' OOS Sharpes, rank 1..N ascending with ties averaged; omega = rank /
    (N + 1) and the logit is log(omega / (1 - omega)). PBO is the share of logits <= 0.

    With per-split CPCV results instead of per-period returns, T is the number of splits (rows
    in split order) and each "return" is that split's score; S must then be small enough that
    every IS half still holds several rows (e.g. S = 4 or 6 for 10-20 splits) or the Sharpe of
    a half is computed from a handful of numbers.

    Memory and time grow with C(S, S/2) * N (12870 * N floats per array for S = 16).
    """
    performance = np.asarray(performance, dtype=float)
    _check_pbo_inputs(performance, n_partitions)
    n_trials = performance.shape[1]

    # Per-block sufficient statistics, so a split's Sharpe is a sum over its blocks. Centering
    # each trial first keeps sum-of-squares variance free of cancellation; it is an exact shift,
    # undone when the means are formed, and does not let OOS rows change an IS Sharpe.
    shift = performance.mean(axis=0)  # (N,)
    centered = performance - shift  # (T, N)
    blocks = np.array_split(np.arange(performance.shape[0]), n_partitions)
    counts = np.array([len(b) for b in blocks], dtype=float)  # (S,)
    sums = np.stack([centered[b].sum(axis=0) for b in blocks])  # (S, N)
    squares = np.stack([(centered[b] ** 2).sum(axis=0) for b in blocks])  # (S, N)
    zero_std = _ZERO_STD_RTOL * np.abs(performance).max(axis=0)  # (N,)

    in_sample = np.zeros((math.comb(n_partitions, n_partitions // 2), n_partitions), dtype=float)
    for row, chosen in enumerate(combinations(range(n_partitions), n_partitions // 2)):
        in_sample[row, list(chosen)] = 1.0  # (C, S)

    def sharpe(mask: np.ndarray) -> np.ndarray:  # (C, S) -> (C, N)
        n = (mask @ counts)[:, None]  # (C, 1)
        total = mask @ sums  # (C, N)
        var = np.maximum((mask @ squares - total**2 / n) / (n - 1), 0.0)
        std = np.sqrt(var)
        mean = total / n + shift
        return np.where(std > zero_std, mean / np.where(std > zero_std, std, 1.0), 0.0)

    is_sharpe = sharpe(in_sample)  # (C, N)
    oos_sharpe = sharpe(1.0 - in_sample)  # (C, N)
    rows = np.arange(len(in_sample))
    best = is_sharpe.argmax(axis=1)  # (C,)
    best_oos = oos_sharpe[rows, best]  # (C,)
    below = (oos_sharpe < best_oos[:, None]).sum(axis=1)
    tied = (oos_sharpe == best_oos[:, None]).sum(axis=1)  # includes the best trial itself
    rank = below + (tied + 1) / 2.0  # (C,) average rank among ties, 1..N
    omega = rank / (n_trials + 1)
    logits = np.log(omega / (1.0 - omega))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        n_combinations=len(in_sample),
        is_sharpe=is_sharpe[rows, best],
        oos_sharpe=best_oos,
    )


def _check_pbo_inputs(performance: np.ndarray, n_partitions: int) -> None:
    if performance.ndim != 2:
        raise ValueError(f"performance must be a 2-D (periods, trials) matrix, got shape {performance.shape}")
    n_periods, n_trials = performance.shape
    if n_trials < 2:
        raise ValueError(f"performance needs at least 2 trials (columns) to rank, got {n_trials}")
    if not np.all(np.isfinite(performance)):
        raise ValueError("performance contains NaN or inf; drop or fill those periods first")
    if n_partitions < 2 or n_partitions % 2:
        raise ValueError(f"n_partitions must be an even number >= 2, got {n_partitions}")
    if n_periods < n_partitions:
        raise ValueError(
            f"performance has {n_periods} periods (rows), fewer than n_partitions={n_partitions}; "
            "lower n_partitions or pass more periods"
        )
    if (n_periods // n_partitions) * (n_partitions // 2) < 2:
        raise ValueError(
            f"with n_partitions={n_partitions} and {n_periods} periods a half holds a single period, "
            "too few for a Sharpe ratio; pass at least 4 periods"
        )


def probabilistic_sharpe_ratio(
    sharpe: float, n_observations: int, skewness: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """Probability that the true per-period Sharpe exceeds ``benchmark`` (PSR).

    PSR = Z((SR - SR*) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2)), with SR the
    observed per-period (not annualised) Sharpe, T = ``n_observations`` returns, and ``kurtosis``
    the plain (non-excess) kurtosis: 3 for normal returns.
    """
    if n_observations < 2:
        raise ValueError(f"n_observations must be >= 2, got {n_observations}")
    values = {"sharpe": sharpe, "skewness": skewness, "kurtosis": kurtosis, "benchmark": benchmark}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    variance = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if variance <= 0.0:
        raise ValueError(
            f"1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe^2 = {variance} is not positive; "
            "kurtosis must be the non-excess kurtosis (>= 1 + skewness^2), e.g. 3 for normal returns"
        )
    z = (sharpe - benchmark) * math.sqrt(n_observations - 1) / math.sqrt(variance)
    return _STANDARD_NORMAL.cdf(z)


def expected_maximum_sharpe(trial_sharpes: Sequence[float]) -> float:
    """Expected maximum of N per-period Sharpe ratios whose true value is 0 (the DSR's SR0).

    SR0 = sqrt(V) * ((1 - gamma) * Z^-1(1 - 1/N) + gamma * Z^-1(1 - 1/(N e))), V the sample
    variance (ddof=1) of the N trials' Sharpe ratios and gamma the Euler-Mascheroni constant.
    The null mean is 0, not the trials' mean, as in the paper.
    """
    sharpes = np.asarray(trial_sharpes, dtype=float)
    if sharpes.ndim != 1 or len(sharpes) < 2:
        raise ValueError(f"trial_sharpes needs at least 2 Sharpe ratios in a flat sequence, got shape {sharpes.shape}")
    if not np.all(np.isfinite(sharpes)):
        raise ValueError("trial_sharpes contains NaN or inf")
    n = len(sharpes)
    gamma = EULER_MASCHERONI
    quantile = (1.0 - gamma) * _STANDARD_NORMAL.inv_cdf(1.0 - 1.0 / n) + gamma * _STANDARD_NORMAL.inv_cdf(
        1.0 - 1.0 / (n * math.e)
    )
    return float(np.std(sharpes, ddof=1)) * quantile


def deflated_sharpe_ratio(
    sharpe: float, n_observations: int, skewness: float, kurtosis: float, trial_sharpes: Sequence[float]
) -> float:
    """PSR of the selected strategy against the Sharpe the best of the N trials would reach by
    luck alone (``expected_maximum_sharpe(trial_sharpes)``); all Sharpes per period.

    ``trial_sharpes`` holds every trial's Sharpe, the selected one included, measured on the same
    periods as ``sharpe``.
    """
    return probabilistic_sharpe_ratio(
        sharpe, n_observations, skewness, kurtosis, benchmark=expected_maximum_sharpe(trial_sharpes)
    )


def minimum_track_record_length(
    sharpe: float, skewness: float, kurtosis: float, benchmark: float = 0.0, confidence: float = 0.95
) -> float:
    """How many returns a strategy with this per-period Sharpe, skewness and (non-excess)
    kurtosis needs before its Sharpe is above ``benchmark`` with ``confidence`` (Bailey and
    López de Prado 2012): MinTRL = 1 + (1 - skew * SR + (kurt - 1) / 4 * SR^2) * (z / (SR - SR*))^2.

    The length at which ``probabilistic_sharpe_ratio`` reaches ``confidence``; infinite when the
    Sharpe is not above the benchmark (no track record proves it).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    probabilistic_sharpe_ratio(sharpe, 2, skewness, kurtosis, benchmark)  # the same checks of the moments
    if kurtosis < 1.0 + skewness**2:
        raise ValueError(f"kurtosis {kurtosis} is below 1 + skewness^2: it must be the non-excess kurtosis, e.g. 3 for normal returns")
    if sharpe <= benchmark:
        return math.inf
    variance = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return 1.0 + variance * (_STANDARD_NORMAL.inv_cdf(confidence) / (sharpe - benchmark)) ** 2
