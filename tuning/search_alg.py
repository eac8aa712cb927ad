"""How a search draws its configs (``--search-alg``): Ray's seeded random sampler, or Optuna's TPE through Ray's
``OptunaSearch``. Either way ASHA (``tuning.asha``) decides which trials stop: searchers choose, schedulers
stop."""

from __future__ import annotations

import math

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

from tuning.settings import SearchSettings


def trial_concurrency(s: SearchSettings) -> int:
    """How many trials run at once: ``--max-concurrent``, else as many as the Ray cluster's CPUs and GPUs
    hold now (at least 1)."""
    if s.max_concurrent:
        return s.max_concurrent
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 1.0) / s.cpus_per_trial]
    if s.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0.0) / s.gpus_per_trial)
    return max(1, math.floor(min(fits)))


def make_search_alg(s: SearchSettings) -> BasicVariantGenerator | Searcher:
    """The search algorithm of ``s``; metric, mode and the space come from the Tuner."""
    if s.search_alg == "random":
        # the generator seeds the sampled configs and also enforces the concurrency limit (0: none)
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.tpe_startup)
    # Ray's advice for a model-based searcher: cap the trials in flight, or it suggests most configs before
    # it has seen a result and works as a random search
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=trial_concurrency(s))


def search_alg_info(s: SearchSettings) -> dict:
    """The report's description of how the configs were drawn."""
    if s.search_alg == "random":
        return {
            "name": "random",
            "implementation": "ray.tune.search.BasicVariantGenerator",
            "seed": s.seed,
            "max_concurrent": s.max_concurrent or "as resources allow",
        }
    return {
        "name": "tpe",
        "implementation": "ray.tune.search.optuna.OptunaSearch (optuna.samplers.TPESampler) in a "
        "ConcurrencyLimiter",
        "seed": s.seed,
        "n_startup_trials": s.tpe_startup,
        "max_concurrent": trial_concurrency(s),
    }
