"""Adding seeds until a verdict settles, with its false WIN/LOSE rate held.

`ra experiment --until-settled --max-seeds N` looks at the verdict after the
first seeds and again after every added seed pair. Looking repeatedly at a
95% interval and stopping at the first one that excludes 0 would declare a
WIN or LOSE for two equal variants far more often than 5% of the time. So
the looks follow a **group-sequential design with alpha spending** (Lan and
DeMets): the planned looks at n_1 < n_2 < ... < n_K = N seeds per arm are
fixed in advance, the information fraction at look k is t_k = n_k / N, and a
spending function alpha(t) says how much of the total error rate alpha may
be used up by look k:

* ``obrien_fleming`` (the default): alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)).
  Almost nothing is spent at the first looks, where two or four seeds say
  little anyway, and the last look is judged at nearly the full alpha.
* ``pocock``: alpha(t) = alpha ln(1 + (e - 1) t), about equal at every look.

The critical values c_k follow from the joint normal law of the standardised
statistics at the looks (their correlation is sqrt(n_j / n_k)): c_1 spends
alpha(t_1), and each later c_k is the value at which the probability of
crossing for the first time at look k, under no effect, equals
alpha(t_k) - alpha(t_{k-1}). It is found by integrating numerically over the
statistic's path (the recursion of Armitage, McPherson and Rowe, on a grid).

The verdict at a look is a Student-t interval over few seeds, not a normal
statistic, and carrying the normal c_k over to t quantiles lets about 5.4%
through instead of 5%. So the levels actually used, :func:`t_levels`, spend
the same alpha(t_k) for the **t statistic of the paired seed differences**:
a fixed-seed simulation of 200,000 histories under no effect (the t
statistic's law does not depend on the noise level) gives, look by look, the
critical |t| at which exactly alpha(t_k) - alpha(t_{k-1}) of the histories
cross for the first time. A look k is then judged by the ordinary verdict
rules at the **nominal confidence** whose t interval has that critical value.
The experiment stops at the first look whose verdict is not INCONCLUSIVE;
stopping for PARITY only ever removes WIN or LOSE chances, so the false
WIN/LOSE rate stays at or below alpha.

Pure numpy and scipy (no torch, no database). :func:`simulate` runs many
histories of a comparison through a vectorised verdict function; with the real
rules (:func:`racli.compare.stats.outcomes`) it gives the README's figures
(``python tools/simulate_verdicts.py``) and the tests check the 5%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SPENDING = ("obrien_fleming", "pocock")
_GRID = 801  # points of the integration grid per look


def plan_looks(first: int, max_seeds: int, step: int = 2) -> list[int]:
    """Seeds per arm at each look: `first`, then every `step` more, ending at `max_seeds`."""
    if first < 2:
        raise ValueError(f"the first look needs at least 2 seeds per arm, got {first}")
    if max_seeds < first:
        raise ValueError(f"--max-seeds {max_seeds} is below the {first} seeds of the first look")
    looks = list(range(first, max_seeds + 1, step))
    if looks[-1] != max_seeds:
        looks.append(max_seeds)
    return looks


def spent(t: float, alpha: float, kind: str = "obrien_fleming") -> float:
    """The error rate a spending function allows by information fraction `t` (0..1)."""
    from scipy.special import ndtr, ndtri

    t = min(max(float(t), 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if kind == "obrien_fleming":
        return float(2.0 - 2.0 * ndtr(ndtri(1.0 - alpha / 2.0) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1.0 + (math.e - 1.0) * t))
    raise ValueError(f"unknown spending function '{kind}' (valid: {', '.join(SPENDING)})")


def _weights(n: int, h: float) -> np.ndarray:
    """Simpson weights for n (odd) equally spaced points of spacing h."""
    w = np.ones(n)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return w * h / 3.0


def boundaries(
    looks: Sequence[int], alpha: float = 0.05, kind: str = "obrien_fleming"
) -> list[float]:
    """Two-sided critical values c_k of the standardised statistic at each look."""
    from scipy.optimize import brentq
    from scipy.special import ndtr, ndtri

    info = [float(n) for n in looks]
    if any(b <= a for a, b in zip(info, info[1:])) or info[0] <= 0:
        raise ValueError(f"looks must increase: {list(looks)}")
    total = info[-1]
    budget = [spent(i / total, alpha, kind) for i in info]
    out: list[float] = []
    grid = dens = None  # continuation density of the score S_k = Z_k sqrt(I_k)
    for k, i_k in enumerate(info):
        a_k = budget[k] - (budget[k - 1] if k else 0.0)
        if k == 0:
            c = float(ndtri(1.0 - a_k / 2.0)) if a_k > 0 else math.inf
        else:
            sd = math.sqrt(i_k - info[k - 1])
            w = _weights(len(grid), grid[1] - grid[0]) * dens

            def excess(b: float, w=w, grid=grid, sd=sd, a_k=a_k) -> float:
                """P(first crossing at this look | boundary b) - the share to spend."""
                return float(np.sum(w * (ndtr((-b - grid) / sd) + ndtr((grid - b) / sd)))) - a_k

            hi = abs(grid).max() + 12.0 * sd
            if a_k <= 0 or excess(hi) >= 0:
                b = math.inf
            else:
                b = brentq(excess, 1e-9, hi, xtol=1e-10)
            c = b / math.sqrt(i_k)
        out.append(c)
        # the density of S_k on (-b_k, b_k), for the next look
        b_k = min(c, 10.0) * math.sqrt(i_k)
        new = np.linspace(-b_k, b_k, _GRID)
        if k == 0:
            dens = np.exp(-0.5 * new**2 / i_k) / math.sqrt(2 * math.pi * i_k)
        else:
            w = _weights(len(grid), grid[1] - grid[0]) * dens
            kern = np.exp(-0.5 * ((new[:, None] - grid[None, :]) / sd) ** 2) / (
                sd * math.sqrt(2 * math.pi)
            )
            dens = kern @ w
        grid = new
    return out


def nominal_levels(
    looks: Sequence[int], alpha: float = 0.05, kind: str = "obrien_fleming"
) -> list[float]:
    """The two-sided nominal significance level of each look: 2 (1 - Phi(c_k))."""
    from scipy.special import ndtr

    return [
        float(2.0 * (1.0 - ndtr(c))) if math.isfinite(c) else 0.0
        for c in boundaries(looks, alpha, kind)
    ]


def t_levels(
    looks: Sequence[int],
    alpha: float = 0.05,
    kind: str = "obrien_fleming",
    paths: int = 200_000,
    seed: int = 0,
) -> list[float]:
    """Two-sided nominal levels of the paired t test at each look that spend alpha(t_k)
    exactly for the t statistic (fixed-seed simulation; see the module docstring)."""
    from scipy.special import stdtr

    looks = [int(n) for n in looks]
    if looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks must increase from at least 2 seeds: {looks}")
    n_max = looks[-1]
    rng = np.random.default_rng(seed)
    total = np.zeros(paths)
    squares = np.zeros(paths)
    alive = np.ones(paths, dtype=bool)
    levels, done, spent_before = [], 0, 0.0
    for n in looks:
        for _ in range(n - done):  # draw seed by seed: memory stays at a few vectors
            x = rng.standard_normal(paths)
            total += x
            squares += x * x
        done = n
        mean = total / n
        var = np.maximum(squares - n * mean * mean, 0.0) / (n - 1)
        t = np.abs(mean) / np.sqrt(var / n)
        now = spent(n / n_max, alpha, kind)
        cross = int(round((now - spent_before) * paths))
        spent_before = now
        candidates = np.sort(t[alive])[::-1]
        if cross <= 0 or len(candidates) == 0:
            levels.append(0.0)
            continue
        cross = min(cross, len(candidates))
        # the critical |t|: half-way between the last crossing and the first staying value
        c = (
            candidates[cross - 1]
            if cross == len(candidates)
            else 0.5 * (candidates[cross - 1] + candidates[cross])
        )
        alive &= ~(t > c)
        levels.append(float(2.0 * (1.0 - stdtr(n - 1, c))))
    return levels


@dataclass
class Design:
    """The planned looks of one experiment and the confidence each is judged at."""

    looks: list[int]
    alpha: float
    kind: str
    levels: list[float] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        first: int,
        max_seeds: int,
        alpha: float = 0.05,
        kind: str = "obrien_fleming",
        step: int = 2,
    ) -> Design:
        looks = plan_looks(first, max_seeds, step)
        return cls(looks, alpha, kind, t_levels(looks, alpha, kind))

    def confidence(self, n: int) -> float:
        """Confidence of the verdict interval at the look with `n` seeds per arm (the last
        planned look at or below n)."""
        index = max((i for i, m in enumerate(self.looks) if m <= n), default=0)
        return 1.0 - self.levels[index]

    def next_look(self, n: int) -> int | None:
        """Seeds per arm at the look after `n` (None when n is the last)."""
        return next((m for m in self.looks if m > n), None)

    def to_dict(self) -> dict:
        return {
            "looks": self.looks,
            "alpha": self.alpha,
            "spending": self.kind,
            "confidence": [1.0 - p for p in self.levels],
        }


# ---------------------------------------------------------------------------- simulation

#: judge(candidate, baseline, confidence) -> outcomes, on (histories, seeds) arrays
Judge = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


@dataclass
class SimResult:
    histories: int
    outcomes: dict[str, int]  # final outcome -> histories
    seeds_used: np.ndarray  # seeds per arm at the stop, per history

    def rate(self, *outcomes: str) -> float:
        return sum(self.outcomes.get(o, 0) for o in outcomes) / self.histories


def draw(
    rng: np.random.Generator,
    histories: int,
    seeds: int,
    *,
    effect: float = 0.0,
    noise: float = 0.007,
    correlation: float = 0.0,
    mean: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, baseline) values, (histories, seeds) each: ``mean x exp(e)`` with
    ``e ~ N(0, noise)`` per run, of which a share ``correlation`` of the variance is common
    to the two arms of a seed (same initialisation and batches); the candidate's values
    are ``1 + effect`` times larger (effect < 0: better on a loss)."""
    shape = (histories, seeds)
    shared = math.sqrt(correlation) * noise * rng.standard_normal(shape)
    own = math.sqrt(1.0 - correlation) * noise
    b = mean * np.exp(shared + own * rng.standard_normal(shape))
    c = mean * (1.0 + effect) * np.exp(shared + own * rng.standard_normal(shape))
    return c, b


def simulate(
    judge: Judge,
    design: Design | None,
    *,
    effect: float = 0.0,
    noise: float = 0.007,
    correlation: float = 0.0,
    histories: int = 400,
    rng_seed: int = 0,
    looks: Sequence[int] | None = None,
    confidence: float = 0.95,
    mean: float = 3.0,
) -> SimResult:
    """Run `histories` experiments through `judge` (vectorised over histories; values from
    :func:`draw`). With a `design`, each history stops at the first look that is not
    INCONCLUSIVE; without one (`looks` and a fixed `confidence`), it shows what naive
    repeated looks would do."""
    rng = np.random.default_rng(rng_seed)
    plan = design.looks if design is not None else list(looks or [])
    n_max = plan[-1]
    c, b = draw(
        rng, histories, n_max, effect=effect, noise=noise, correlation=correlation, mean=mean
    )
    final = np.full(histories, "INCONCLUSIVE", dtype=object)
    used = np.full(histories, n_max)
    open_ = np.ones(histories, dtype=bool)
    for n in plan:
        idx = np.nonzero(open_)[0]
        if len(idx) == 0:
            break
        conf = design.confidence(n) if design is not None else confidence
        out = np.asarray(judge(c[idx, :n], b[idx, :n], conf))
        decided = out != "INCONCLUSIVE"
        final[idx[decided]] = out[decided]
        used[idx] = n
        open_[idx[decided]] = False
    names, counts = np.unique(final.astype(str), return_counts=True)
    return SimResult(histories, dict(zip(names.tolist(), counts.tolist())), used)
