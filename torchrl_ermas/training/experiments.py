"""Running grids of training runs together, transfer evaluation, and statistics over seeds."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torchrl.envs import EnvBase
from tqdm.auto import tqdm

from ..defaults import default_of
from ..validation import check_int
from .config import TrainConfig, as_config, validate
from .population import PopulationTrainer, ResumeMismatchError, populations
from .ray_backend import check_ray_address, ray_results
from .run_folder import check_own_folders, flatten, is_under
from .trainer import ErmasTrainer

PostHook = Callable[[ErmasTrainer], dict[str, Any]]
#: ``env_factory(cfg, batch_size, device)`` builds the environments of the run ``cfg``
EnvFactory = Callable[[TrainConfig, int, torch.device], EnvBase]


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with overrides, type-checked against the schema.

    Keys may be dotted (``"reward.q"``) and values may be nested dicts
    (``{"reward": {"q": 0.3}}``); unknown keys raise.

    Examples:
        >>> cfg = with_overrides(TrainConfig(), {"reward.q": 0.3, "ermas": {"epsilon": 5.0}})
        >>> cfg.reward.q, cfg.ermas.epsilon
        (0.3, 5.0)
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return as_config(cfg, nested)


def _override_key(override: str) -> str:
    """The dotted key of a command-line override: ``"+train.seed=3"`` -> ``"train.seed"``."""
    return override.split("=", 1)[0].lstrip("+~")


def validate_experiment(
    train: TrainConfig,
    *,
    sweeps: dict[str, Sequence],
    workers: int,
    population_size: int = 1,
    ray_address: str | None = None,
    owned: dict[str, str] | None = None,
    methods: dict[str, dict[str, Any]] | None = None,
    transfer: dict[str, Any] | None = None,
    transfer_owned: dict[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> None:
    """The checks an experiment script makes before any run starts.

    An experiment builds its runs from the base run ``train`` and sets some of its keys
    itself in every run: always ``seed`` (from the experiment's seeds) and ``output_dir``
    (a folder per run under hydra's run folder), every key that all ``methods`` set, and
    the keys of ``owned``. A value for one of them in ``train`` would be ignored, so it is
    refused, naming what to set instead: a value other than the schema default, or a
    command-line override ``train.<key>=...``. Likewise a method or the ``transfer``
    overrides may not set what the experiment sets per run (``seed``, ``output_dir``; for
    transfer runs also what :func:`transfer_config` sets and ``transfer_owned``).

    Args:
        train: the experiment's base run (each run built from it is validated when built,
            by :func:`method_seed_configs` and :func:`transfer_config`).
        sweeps: name -> values of each list the experiment sweeps (``{"seeds": [0, 1]}``);
            none may be empty or repeat a value (numbers compared as their folder names,
            ``f"{value:g}"``).
        workers: processes of :func:`run_many`, an int ``>= 1``.
        population_size: the largest population of :func:`run_many`, an int ``>= 1``.
        ray_address: :func:`run_many`'s Ray backend (``None``: local processes); a Ray
            address needs Ray installed.
        owned: further dotted keys of ``train`` the experiment sets per run, each mapped
            to what to do instead (``{"ermas.epsilon": "set epsilons instead"}``).
        methods: name -> overrides of ``train`` per method (see :func:`method_seed_configs`).
        transfer: the overrides of ``train`` for the transfer runs, if any.
        transfer_owned: dotted keys the experiment sets in every transfer run, mapped to
            what to do instead (``{"reward.q": "set q_test instead"}``).
        overrides: the command-line overrides (hydra's ``HydraConfig.get().overrides.task``).

    Examples:
        >>> validate_experiment(with_overrides(TrainConfig(), {"seed": 3}),
        ...                     sweeps={"seeds": [0]}, workers=1)
        Traceback (most recent call last):
        ...
        ValueError: train.seed is set per run by this experiment: set seeds instead (got train.seed=3).
    """
    check_int("workers", workers, 1)
    check_int("population_size", population_size, 1)
    check_ray_address(ray_address)
    for name, values in sweeps.items():
        if not values:
            raise ValueError(f"{name} must list at least one value, got {list(values)}.")
        folders = [f"{value:g}" if isinstance(value, (int, float)) else str(value) for value in values]
        if len(set(folders)) != len(folders):  # repeated runs would be merged, then counted twice
            raise ValueError(f"{name} must list distinct values (each names its runs' folders), got {list(values)}.")
    per_run = {
        "seed": "set seeds instead",
        "output_dir": "each run writes under hydra.run.dir, set that instead",
    }
    for name, method in (methods or {}).items():
        _refuse_keys(f"methods.{name}", method, per_run)
    if transfer is not None:
        _refuse_keys("transfer", transfer, {**per_run, **TRANSFER_KEYS, **(transfer_owned or {})})
    owned = {**per_run, **_keys_of_every_method(methods or {}), **(owned or {})}
    default, given = OmegaConf.structured(TrainConfig), OmegaConf.structured(as_config(train))
    cli = [_override_key(o)[len("train.") :] for o in overrides if _override_key(o).startswith("train.")]
    for key, instead in owned.items():
        value = OmegaConf.select(given, key)
        # an override of a parent node (train.ermas={...}) is judged by the value alone
        on_cli = any(is_under(k, key) for k in cli)
        if on_cli or value != OmegaConf.select(default, key):
            raise ValueError(f"train.{key} is set per run by this experiment: {instead} (got train.{key}={value!r}).")


def _refuse_keys(where: str, overrides: dict[str, Any], owned: dict[str, str]) -> None:
    """Refuses the overrides ``where`` that set (or contain) a key of ``owned``."""
    for key in flatten(dict(overrides)):
        for taken, instead in owned.items():
            if is_under(key, taken) or is_under(taken, key):
                raise ValueError(f"{where}.{key} is set per run by this experiment: {instead}.")


def _keys_of_every_method(methods: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The dotted keys that every method's overrides set, with where to set them."""
    if not methods:
        return {}
    keys = [set(flatten(dict(overrides))) - {""} for overrides in methods.values()]
    return {key: f"set it per method instead (methods.<name>.{key})" for key in sorted(set.intersection(*keys))}


def method_seed_configs(
    cfg: TrainConfig, methods: dict[str, dict[str, Any]], seeds: Sequence[int], root: str | Path
) -> dict[tuple[str, int], TrainConfig]:
    """One run per method and seed, keyed ``(method, seed)``, writing to ``root/method/seed{s}``.

    Examples:
        >>> runs = method_seed_configs(TrainConfig(), {"marl": {"variant": "marl"}}, [0, 1], "out")
        >>> sorted(runs), runs["marl", 1].seed, runs["marl", 1].output_dir
        ([('marl', 0), ('marl', 1)], 1, 'out/marl/seed1')
    """
    root = Path(root)
    runs = {
        (name, seed): with_overrides(cfg, {**overrides, "seed": seed, "output_dir": str(root / name / f"seed{seed}")})
        for name, overrides in methods.items()
        for seed in seeds
    }
    for (name, seed), run_cfg in runs.items():
        try:
            validate(run_cfg)
        except ValueError as err:
            raise ValueError(f"run {name!r} (seed {seed}): {err}") from None
    return runs


#: what :func:`transfer_config` sets in every transfer run, and why
TRANSFER_KEYS = {
    key: "a transfer run trains fresh MARL agents against the frozen trained planner"
    for key in ("variant", "train_planner", "planner_checkpoint")
}


#: the settings of a run that trains fresh agents by MARL under a planner it does not train
_FRESH_AGENTS = {"variant": "marl", "train_planner": False}


def transfer_config(
    cfg: TrainConfig, planner_checkpoint: str | Path, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The ERMAS transfer test: a frozen trained planner with fresh agents trained by MARL.

    The returned run loads the planner of ``planner_checkpoint``, freezes it, and trains
    new agents with plain multi-agent PPO in the test environment given by ``overrides``
    (for example ``{"reward.q": 0.4}``), which should also give it its own ``output_dir``
    (the folder of ``planner_checkpoint`` is refused). ``resume`` and ``overwrite`` are
    those of ``cfg``, so an experiment re-run with ``resume`` resumes its transfers too.
    """
    settings = {**_FRESH_AGENTS, "planner_checkpoint": str(planner_checkpoint)}
    transfer = with_overrides(cfg, {**settings, **(overrides or {})})
    validate(transfer)
    return transfer


def transfer_grid(
    cfg: TrainConfig,
    trained: dict[tuple[str, int], TrainConfig],
    test_key: str,
    test_values: Sequence[float],
    root: str | Path,
    label: str,
    *,
    fixed_planners: dict[str, dict[str, Any]] | None = None,
) -> dict[tuple[str, int, float], TrainConfig]:
    """:func:`transfer_config` for each trained run and test value, keyed ``(name, seed, value)``.

    Each transfer run sets ``test_key`` (a dotted ``TrainConfig`` key, e.g. ``"reward.q"``)
    to the test value and the seed of its trained run, and writes to
    ``root/name/{label}{value}/seed{s}``; ``trained`` is keyed like
    :func:`method_seed_configs`. ``fixed_planners`` adds planners that are not trained
    (baselines): each name's overrides (e.g. a ``fixed_planner``) give runs with fresh MARL
    agents on the seeds of ``trained``, in the same layout.

    Examples:
        >>> trained = method_seed_configs(TrainConfig(), {"marl": {"variant": "marl"}}, [0], "out/train")
        >>> runs = transfer_grid(TrainConfig(), trained, "reward.q", [0.0, 0.5], "out/transfer", "q")
        >>> runs["marl", 0, 0.5].reward.q, runs["marl", 0, 0.5].output_dir
        (0.5, 'out/transfer/marl/q0.5/seed0')
    """
    owned = sorted({"seed", "output_dir", *TRANSFER_KEYS})
    if test_key in owned:
        raise ValueError(
            f"test_key must be a setting of the test, not one the grid sets itself ({owned}), got {test_key!r}."
        )
    folders = [f"{label}{value:g}" for value in test_values]
    if len(set(folders)) != len(folders):
        raise ValueError(
            f"test_values must give distinct folders ({label}<value:g>), got {list(test_values)}: {folders}."
        )
    root = Path(root)

    def test(name: str, seed: int, value: float) -> dict[str, Any]:
        return {test_key: value, "seed": seed, "output_dir": str(root / name / f"{label}{value:g}" / f"seed{seed}")}

    runs = {
        (name, seed, value): transfer_config(cfg, Path(run_cfg.output_dir) / "checkpoint.pt", test(name, seed, value))
        for (name, seed), run_cfg in trained.items()
        for value in test_values
    }
    seeds = sorted({seed for _, seed in trained})
    fixed_planners = fixed_planners or {}
    clash = sorted(set(fixed_planners) & {name for name, _ in trained})
    if clash:
        raise ValueError(f"fixed_planners must not reuse the names of trained runs, got {clash}")
    for name, overrides in fixed_planners.items():
        for seed in seeds:
            for value in test_values:
                run = with_overrides(cfg, {**_FRESH_AGENTS, **overrides, **test(name, seed, value)})
                try:
                    validate(run)
                except ValueError as err:
                    raise ValueError(f"fixed planner {name!r} (seed {seed}, {test_key}={value:g}): {err}") from None
                runs[name, seed, value] = run
    return runs


def relative_summary(
    results: dict[tuple[str, int, float], dict[str, Any]],
    metrics: Sequence[str],
    reference: str,
    key: str = "planner_reward",
) -> dict[str, dict[str, list[float]]]:
    """Per name: mean and s.e. over seeds of each final metric at each test value, and of
    ``key`` minus the reference's (paired by seed and test value).

    ``results`` is keyed ``(name, seed, value)`` like :func:`transfer_grid`; the summary of
    a name holds ``metric`` and ``metric_sem`` for each of ``metrics``, and ``relative`` and
    ``relative_sem``, each a list over the test values in the order they first appear.

    Examples:
        >>> results = {(n, s, 0.0): {"final": {"planner_reward": r}}
        ...            for n, s, r in [("a", 0, 1.0), ("a", 1, 3.0), ("b", 0, 0.0), ("b", 1, 0.0)]}
        >>> relative_summary(results, ["planner_reward"], reference="b")["a"]
        {'planner_reward': [2.0], 'planner_reward_sem': [1.0], 'relative': [2.0], 'relative_sem': [1.0]}
    """
    names = list(dict.fromkeys(name for name, _, _ in results))
    seeds = list(dict.fromkeys(seed for _, seed, _ in results))
    values = list(dict.fromkeys(value for _, _, value in results))
    if reference not in names:
        raise ValueError(f"reference must be one of {names}, got {reference!r}.")

    def final(name: str, seed: int, value: float, metric: str) -> float:
        return results[name, seed, value]["final"][metric]

    summary = {}
    for name in names:
        stats: dict[str, list[float]] = {}
        series = {metric: [[final(name, s, v, metric) for s in seeds] for v in values] for metric in metrics}
        series["relative"] = [[final(name, s, v, key) - final(reference, s, v, key) for s in seeds] for v in values]
        for metric, per_value in series.items():
            stats[metric] = [mean_sem(x)[0] for x in per_value]
            stats[f"{metric}_sem"] = [mean_sem(x)[1] for x in per_value]
        summary[name] = stats
    return summary


def run(cfg: TrainConfig, post: PostHook | None = None, env_factory: EnvFactory | None = None) -> dict[str, Any]:
    """Trains one configuration (one torch thread) and returns its results.

    ``post(trainer)`` may add entries to ``results["final"]`` (e.g. exact regrets).
    ``env_factory(cfg, batch_size, device)`` replaces instantiating ``cfg.env`` (for
    environments that need more than the config node, such as an added transform).
    """
    torch.set_num_threads(1)
    env_fn = None if env_factory is None else partial(env_factory, cfg)
    trainer = ErmasTrainer(cfg, env_fn=env_fn)
    return _with_post(trainer, trainer.train(), post)


def _with_post(trainer: ErmasTrainer, results: dict[str, Any], post: PostHook | None) -> dict[str, Any]:
    """A finished run's ``results``; with ``post``, its entries added to ``final`` and
    ``results.json`` rewritten."""
    if post is None:
        return results
    trainer.extra_final.update(post(trainer))
    return trainer.write_results()


def run_population(
    cfgs: Sequence[TrainConfig], post: PostHook | None = None, env_factory: EnvFactory | None = None
) -> list[dict[str, Any]]:
    """Trains ``cfgs`` as one :class:`~torchrl_ermas.training.PopulationTrainer` (one torch
    thread) and returns each run's results; ``post`` is applied to each run's trainer and
    ``env_factory`` receives the first run's configuration (the runs share one batched
    environment; see :func:`run`). A population of one is :func:`run`, and so is each run
    of a population whose checkpoints to resume are at different iterations (a kill
    between the runs' checkpoint writes): each resumes alone from its own."""
    if len(cfgs) == 1:
        return [run(cfgs[0], post, env_factory)]
    torch.set_num_threads(1)
    env_fn = None if env_factory is None else partial(env_factory, cfgs[0])
    try:
        population = PopulationTrainer(cfgs, env_fn=env_fn)
    except ResumeMismatchError:
        return [run(cfg, post, env_factory) for cfg in cfgs]
    return [_with_post(trainer, results, post) for trainer, results in zip(population.runs, population.train())]


def run_many(
    configs: Sequence[TrainConfig | dict],
    *,
    workers: int = 1,
    population_size: int = 32,
    ray_address: str | None = None,
    post: PostHook | None = None,
    env_factory: EnvFactory | None = None,
    desc: str = "runs",
) -> list[dict[str, Any]]:
    """Runs ``configs`` together; results in input order.

    The runs that can batch train as populations of at most ``population_size`` runs
    (:func:`~torchrl_ermas.training.population.populations`: the ``marl``, ``fixed_lambda``
    and ``ermas`` runs that differ only in per-run values such as seeds, ``reward.q``,
    epsilon or a frozen planner, dealt to at least ``workers`` populations); every other run
    trains alone, and ``population_size=1`` trains every run alone. A run in a population
    learns as it does alone, in distribution: it draws its random numbers from a stretch of
    its population's stream, so its numbers depend on the grid and on ``workers`` (the same
    call gives the same results).

    Without ``ray_address`` the populations share ``workers`` processes of this machine,
    each single-threaded, so ``workers`` equal to the number of cores uses
    the machine fully. With ``ray_address`` each population is a Ray task of one CPU
    (:func:`~torchrl_ermas.training.ray_backend.ray_results`): ``"local"`` starts a Ray of
    ``workers`` CPUs here, any other value is the address of a Ray cluster for
    ``ray.init`` (``"auto"``, ``"ray://head:10001"``); its nodes must see the runs'
    ``output_dir`` (a shared file system) for the logs, checkpoints and resumes. ``post``
    and ``env_factory`` (see :func:`run_population`) must be picklable, e.g. module-level
    functions or partials of them (they cross processes).
    """
    check_int("workers", workers, 1)
    check_int("population_size", population_size, 1)
    check_ray_address(ray_address)
    configs = [as_config(cfg) for cfg in configs]
    check_own_folders([cfg.output_dir for cfg in configs])
    chunks = populations(configs, size=population_size, workers=workers)
    args = [([configs[i] for i in chunk], post, env_factory) for chunk in chunks]
    results: list[dict[str, Any] | None] = [None] * len(configs)
    bar = tqdm(total=len(configs), desc=desc)

    def record(task: int, chunk_results: list[dict[str, Any]]) -> None:
        for index, result in zip(chunks[task], chunk_results):
            results[index] = result
        bar.update(len(chunk_results))

    if ray_address is not None:
        for task, chunk_results in ray_results(run_population, args, ray_address=ray_address, workers=workers):
            record(task, chunk_results)
    elif workers == 1:
        for task, arguments in enumerate(args):
            record(task, run_population(*arguments))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_population, *arguments): task for task, arguments in enumerate(args)}
            for future in as_completed(futures):
                record(futures[future], future.result())
    bar.close()
    return results


@dataclass
class LaunchConfig:
    """How an experiment's grid of runs is launched: the fields an experiment's schema
    inherits, passed to :func:`run_many` (and :func:`validate_experiment`) by
    :func:`launch_settings`.

    Attributes:
        workers: runs in parallel (processes, one torch thread each).
        population_size: the largest population of runs trained as one batched computation
            (:func:`run_many`'s default; ``1`` trains every run alone).
        ray_address: run the grid on Ray instead (``local``, or a cluster's address: see
            :func:`run_many`).

    Examples:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Sweep(LaunchConfig):
        ...     seeds: list[int] = field(default_factory=lambda: [0, 1])
        >>> launch_settings(Sweep(population_size=1))
        {'workers': 2, 'population_size': 1, 'ray_address': None}
    """

    workers: int = 2
    population_size: int = default_of(run_many, "population_size")
    ray_address: str | None = None


def launch_settings(experiment: LaunchConfig) -> dict[str, Any]:
    """The :class:`LaunchConfig` fields of an experiment, as keyword arguments of
    :func:`run_many` and :func:`validate_experiment`."""
    return {item.name: getattr(experiment, item.name) for item in fields(LaunchConfig)}


def mean_sem(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``0`` for a single value).

    Examples:
        >>> mean, sem = mean_sem([1.0, 2.0, 3.0])
        >>> mean, round(sem, 4)
        (2.0, 0.5774)
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sem needs at least one value, got none.")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def multiplier_settling(lambdas: Sequence[Sequence[float]]) -> list[float]:
    """Per agent, how much ``lambda`` still moved over the last 20 % of a run.

    The relative change between the mean over the last 10 % of the iterations and the mean
    over the 10 % before (each a few regret estimates, so that the noise of single
    estimates averages out); ``0`` where ``lambda`` ends at ``0`` (a slack constraint).

    Args:
        lambdas: the run's ``history["lambda"]``, one ``[n_agents]`` row per iteration.

    Examples:
        >>> multiplier_settling([[4.0, 0.0]] * 10 + [[2.0, 0.0]] * 10)
        [0.0, 0.0]
        >>> multiplier_settling([[4.0, 1.0]] * 18 + [[2.0, 1.0]] * 2)
        [1.0, 0.0]
    """
    values = torch.tensor(lambdas, dtype=torch.float64)
    if values.dim() != 2 or len(values) < 2:
        raise ValueError(f"lambdas must hold at least 2 rows of per-agent values, got shape {list(values.shape)}.")
    tenth = max(len(values) // 10, 1)
    before, last = values[-2 * tenth : -tenth].mean(0), values[-tenth:].mean(0)
    change = (last - before).abs() / last.clamp_min(1e-12)
    return torch.where(last > 1e-9, change, 0.0).tolist()
