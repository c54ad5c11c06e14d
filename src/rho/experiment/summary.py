"""The arithmetic of a multi-arm, multi-seed experiment: pure functions from per-run results
(plain, JSON-ready dicts) to the tables a sceptical reviewer asks for.

This module owns: the test-loss table per arm and held-out axis (``loss_table``), the compute
needed to reach a target validation loss — tokens, training FLOPs and wall time, one-off and
amortised over runs that reuse an arm's overhead (reference training and scoring), with the
break-even number of runs (``compute_table``) — and which arm wins on each axis, SLM or not
(``winners``). The spread over seeds and the tests of a difference are ``rho.experiment.stats``;
the verdict stored in results.json is ``rho.experiment.facts``; Markdown is
``rho.experiment.tables`` and figures ``rho.experiment.figures``.

Input schema::

    runs: dict[str, list[dict]]   # arm -> one dict per seed:
      {"seed": 0,
       "final": {"validation": {"target": 4.1, "general": 4.5},
                 "test": {"target": 4.12, "general": 4.49}},
       "curve": {"tokens": [...], "flops": [...], "seconds": [...], "target": [...]},
       "train_tokens": 655360, "flops_train": 1.2e12, "seconds_train": 40.0}
    overhead: dict[str, dict]     # arm -> {"flops": 3e11, "seconds": 20.0, "what": "..."}

``curve[axis]`` is the validation loss on that axis at each evaluation; ``curve["tokens"]``,
``["flops"]`` and ``["seconds"]`` the cumulative training tokens, FLOPs and seconds there.
"""

from __future__ import annotations

import math

import numpy as np

from rho.experiment.stats import difference, spread

# Per-seed costs read from a curve (its key) and from a run's end (its key).
_COSTS = (("tokens", "tokens", "train_tokens"),
          ("flops_train", "flops", "flops_train"),
          ("seconds_train", "seconds", "seconds_train"))  # fmt: skip


def loss_table(runs: dict, split: str = "test") -> dict:
    """``table[arm][axis]`` = the ``spread`` over the arm's seeds of its final loss on ``split``
    (an axis missing from some seeds is spread over the seeds that have it)."""
    table = {}
    for arm, seeds in runs.items():
        per_axis: dict[str, list[float]] = {}
        for run in seeds:
            for axis, loss in run["final"][split].items():
                per_axis.setdefault(axis, []).append(loss)
        table[arm] = {axis: spread(v) for axis, v in per_axis.items()}
    return table


def tokens_to_reach(tokens: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First point where a curve reaches ``target`` (x at the first loss <= target), linearly
    interpolated between evaluations; None if it never does."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return float(tokens[0])
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
    return None


def _reach(run: dict, target: float, axis: str) -> dict:
    """A seed's tokens, training FLOPs and seconds where its validation curve on ``axis`` first
    reaches ``target`` (linear interpolation between evaluations; None: never, or no such
    column in the curve)."""
    curve = run["curve"]
    losses = np.asarray(curve[axis], dtype=np.float64)
    out = {}
    for key, column, _ in _COSTS:
        xs = curve.get(column)
        out[key] = None if xs is None else tokens_to_reach(np.asarray(xs, float), losses, target)
    return out


def final_loss(run: dict, axis: str, split: str = "validation") -> float:
    """A run's final loss on the whole ``split`` set of ``axis`` (its curve's last point if the
    run has no final record)."""
    final = run.get("final", {}).get(split, {})
    return float(final[axis]) if axis in final else float(run["curve"][axis][-1])


def _full(run: dict) -> dict:
    """A seed's whole-run tokens, training FLOPs and seconds (the curve's last point if the run
    does not record them)."""
    out = {}
    for key, column, end in _COSTS:
        value = run.get(end)
        if value is None and run["curve"].get(column):
            value = run["curve"][column][-1]
        out[key] = None if value is None else float(value)
    return out


def _spread_or_none(values) -> dict | None:
    """The spread of per-seed values, or None unless every seed has one: a mean over only the
    seeds that got there would report the lucky ones."""
    if not values or any(v is None for v in values):
        return None
    return spread(values)


def break_even(train: float, overhead: float, base_train: float, base_overhead: float = 0.0):
    """The smallest number of runs N from which on an arm's amortised total is below the
    baseline's, i.e. for every M ≥ N:

        train + overhead/M < base_train + base_overhead/M
        ⇔ M·(base_train − train) > overhead − base_overhead.

    With d = base_train − train (saving per run) and e = overhead − base_overhead (extra one-off
    cost): d > 0 gives N = max(1, ⌊e/d⌋ + 1) (strict inequality, so e/d = 2.5 → 3 and e/d = 2 →
    3); d = 0 gives N = 1 when e < 0, else None; d < 0 gives None: the arm's training alone costs
    more than the baseline's, so no number of runs pays its overhead back. Example: overhead 10,
    training 6, baseline 10 → 6 + 10/N < 10 ⇔ N > 2.5 → N = 3."""
    d = base_train - train
    e = overhead - base_overhead
    if d < 0 or (d == 0 and e >= 0):
        return None
    if d == 0:
        return 1

    def below(n: int) -> bool:
        return train + overhead / n < base_train + base_overhead / n

    n = max(1, math.floor(e / d) + 1)
    while not below(n):  # guard against rounding of e/d at an exact integer
        n += 1
    while n > 1 and below(n - 1):
        n -= 1
    return n


def _totals(reach: list, extra: float, base_train: float, base_extra: float, amortise) -> dict:
    """One-off and amortised totals (training to reach + overhead, or + overhead/N) of one cost,
    per seed, with their ratios to the baseline's totals and the break-even N (on means)."""
    one_off = _spread_or_none([None if r is None else r + extra for r in reach])
    base_one_off = base_train + base_extra
    out = {
        "one_off": one_off,
        "ratio_one_off": _ratio(reach, extra, base_one_off),
        "amortised": [],
        "break_even": None,
    }
    for n in amortise:
        base_n = base_train + base_extra / n
        total = _spread_or_none([None if r is None else r + extra / n for r in reach])
        out["amortised"].append(
            {"runs": int(n), "total": total, "ratio": _ratio(reach, extra / n, base_n)}
        )
    if one_off is not None:
        train = one_off["mean"] - extra
        out["break_even"] = break_even(train, extra, base_train, base_extra)
    return out


def _ratio(reach: list, extra: float, base: float | None) -> dict | None:
    """The spread over seeds of (value + extra) / base; None if a seed has no value or base is 0."""
    if not base or not reach or any(r is None for r in reach):
        return None
    return spread([(r + extra) / base for r in reach])


def compute_table(
    runs: dict,
    overhead: dict | None = None,
    baseline: str = "clm",
    amortise=(1, 10, 100),
    axis: str = "target",
    target: float | None = None,
) -> dict:
    """What each arm spends to reach ``target`` on ``axis``: by default the baseline's final
    validation loss (the mean over its seeds of ``final["validation"][axis]``, the whole
    validation set, or of its curve's last point when a run has no final record).

    ``table[arm]`` has: ``baseline``, ``target`` (that loss), ``seeds`` and ``reached`` (how many
    seeds got there); ``tokens``, ``flops_train``, ``seconds_train`` (the ``spread`` over seeds of
    the cost to reach, linearly interpolated on the curve; None unless every seed reaches);
    ``ratio`` (each of those three divided by the baseline's whole-run mean, as a spread);
    ``overhead`` ({flops, seconds, what}: the arm's one-off cost before training); and
    ``flops_total`` / ``seconds_total``, each {``one_off``: spread of training-to-reach +
    overhead, ``ratio_one_off``: spread of its ratio to the baseline's training + own overhead,
    ``amortised``: [{``runs``: N, ``total``: spread of training + overhead/N, ``ratio``: spread
    of its ratio to the baseline's training + overhead/N}] for each N in ``amortise``,
    ``break_even``: the smallest N from which on the arm is cheaper, see ``break_even``}.

    The baseline is measured like every arm, on its curve: a seed that ends above the mean of
    its seeds does not reach it, and the curves may be a sample of the validation set while the
    target is the whole set's."""
    overhead = overhead or {}
    if baseline not in runs:
        raise KeyError(f"baseline arm {baseline!r} not in runs ({', '.join(runs)})")
    base_runs = runs[baseline]
    if target is None:
        target = float(np.mean([final_loss(r, axis) for r in base_runs]))
    base_full = [_full(r) for r in base_runs]
    base_mean = {}
    for key, _, _ in _COSTS:
        vals = [f[key] for f in base_full]
        base_mean[key] = None if any(v is None for v in vals) else float(np.mean(vals))
    base_extra = {k: float(overhead.get(baseline, {}).get(k, 0.0)) for k in ("flops", "seconds")}

    table = {}
    for arm, seeds in runs.items():
        reach = [_reach(r, target, axis) for r in seeds]
        extra = overhead.get(arm, {})
        extra = {
            "flops": float(extra.get("flops", 0.0)),
            "seconds": float(extra.get("seconds", 0.0)),
            "what": extra.get("what", ""),
        }
        per_key = {key: [r[key] for r in reach] for key, _, _ in _COSTS}
        row = {
            "baseline": baseline,
            "target": target,
            "seeds": len(seeds),
            "reached": sum(r["tokens"] is not None for r in reach),
            **{key: _spread_or_none(per_key[key]) for key, _, _ in _COSTS},
            "ratio": {key: _ratio(per_key[key], 0.0, base_mean[key]) for key, _, _ in _COSTS},
            "overhead": extra,
        }
        for cost, key in (("flops", "flops_train"), ("seconds", "seconds_train")):
            if base_mean[key] is None:
                row[f"{cost}_total"] = None
                continue
            row[f"{cost}_total"] = _totals(
                per_key[key], extra[cost], base_mean[key], base_extra[cost], amortise
            )
        table[arm] = row
    return table


def _rank(candidates: dict, paired=None) -> dict | None:
    """The best (lowest) and runner-up of {arm: spread} (None values skipped), with their
    difference; ``paired(a, b)`` says whether two arms' values pair by seed."""
    items = [(arm, s) for arm, s in candidates.items() if s is not None]
    if not items:
        return None
    items.sort(key=lambda kv: kv[1]["mean"])
    arm, best = items[0]
    out = {
        "arm": arm,
        "value": best,
        "runner_up": None,
        "runner_up_value": None,
        "difference": None,
        "ranking": [a for a, _ in items],
        "places": {a: i + 1 for i, (a, _) in enumerate(items)},
        "ranked": len(items),
    }
    if len(items) > 1:
        out["runner_up"], out["runner_up_value"] = items[1]
        both = paired is not None and paired(arm, items[1][0])
        out["difference"] = difference(best["values"], items[1][1]["values"], paired=both)
    return out


def winners(
    loss_table: dict, compute_table: dict | None = None, paired=None, tokens_left_out=()
) -> dict:
    """Which arm wins on each axis, whichever it is.

    Returns {``loss``: {axis: rank}, ``tokens``: rank, ``flops_one_off``: rank,
    ``flops_amortised``: rank with ``runs`` (the largest N amortised over), ``baseline``,
    ``target``}, where a rank is {``arm``, ``value`` (its spread), ``runner_up``,
    ``runner_up_value``, ``difference`` (winner − runner-up, see ``difference``: its
    ``supported`` says whether the lead survives the spread over seeds), ``ranking`` (all arms
    with a value, best first)}, or None when no arm has a value (e.g. none reached the target).
    Loss: lowest mean test loss. Compute: fewest tokens to reach the target, least one-off total
    FLOPs (training to reach + overhead) and least FLOPs amortised over the largest N; arms that
    did not reach the target on every seed are left out, and so are ``tokens_left_out`` from the
    tokens rank (tokens of another kind, e.g. curated rather than corpus tokens). ``paired(a,
    b)``: whether two arms' seeds share data order (a paired test), see ``difference``."""
    axes: list[str] = []
    for row in loss_table.values():
        axes += [a for a in row if a not in axes]
    out: dict = {
        "loss": {
            axis: _rank({arm: row.get(axis) for arm, row in loss_table.items()}, paired)
            for axis in axes
        },
        "tokens": None,
        "flops_one_off": None,
        "flops_amortised": None,
        "baseline": None,
        "target": None,
    }
    if not compute_table:
        return out
    first = next(iter(compute_table.values()))
    out["baseline"], out["target"] = first["baseline"], first["target"]
    out["tokens"] = _rank({arm: row["tokens"] for arm, row in compute_table.items()
                           if arm not in tokens_left_out}, paired)  # fmt: skip
    flops = {arm: row["flops_total"] for arm, row in compute_table.items() if row["flops_total"]}
    out["flops_one_off"] = _rank({arm: t["one_off"] for arm, t in flops.items()}, paired)
    if flops:
        largest = max(range(len(first["flops_total"]["amortised"])),
                      key=lambda i: first["flops_total"]["amortised"][i]["runs"])  # fmt: skip
        ranked = _rank({arm: t["amortised"][largest]["total"] for arm, t in flops.items()}, paired)
        if ranked is not None:
            ranked["runs"] = first["flops_total"]["amortised"][largest]["runs"]
        out["flops_amortised"] = ranked
    return out


# ---------------------------------------------------------------- Markdown
