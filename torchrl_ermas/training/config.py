"""Structured (dataclass) configuration of the ERMAS training loop.

The dataclasses are hydra schemas: registered with :func:`register_configs`, a yaml file
that composes them is type-checked, and unknown or mistyped keys are rejected.
The environment is configured by a ``_target_`` node (any callable returning a batched
environment that follows the torchrl-ermas contract), so that the core library never
imports :mod:`torchrl_ermas.envs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..defaults import default_of
from ..objectives.lagrange import LagrangeMultiplier
from ..objectives.planner import CRITIC_LOSS_TYPES
from ..regret import MetaGradient, ReptileRegretEstimator
from ..regret.reptile import DEVIATION_OPTIMIZERS
from ..validation import check_choice, check_int, check_number, check_real, check_seed
from .variants import VARIANTS

#: settings that may differ from a checkpoint's when a run resumes (``iterations`` may only
#: grow; ``device`` moves a run to another machine, ``history_window`` only changes the
#: final summary); a ``logger`` entry stands for all of its keys
RESUMABLE_KEYS = (
    "iterations",
    "progress",
    "resume",
    "overwrite",
    "output_dir",
    "checkpoint_interval",
    "logger",
    "device",
    "history_window",
)


@dataclass
class PPOConfig:
    """PPO settings of one group (the agents or the planner).

    The trainer builds every group's loss from these (``MAPPOLoss`` for MARL and the
    planner, :class:`~torchrl_ermas.objectives.ErmasLoss` for the agents otherwise), so
    MARL and ERMAS runs differ only in the loss; ``ErmasLoss``'s own defaults (the ERMAS
    authors' values) apply when it is built by hand.

    Attributes:
        lr: Adam learning rate of the policy and the critic.
        anneal_start: the share of the run's iterations at the full ``lr``; over the rest the
            learning rate decays linearly to zero (``1``: a constant ``lr``). ERMAS' agents
            follow ``lambda`` within an estimate or two and keep drifting around its
            switching point; annealing them with the multipliers
            (``ErmasConfig.lambda_anneal_start``) lets a run end where the search led it.
        clip_epsilon: PPO ratio clip.
        entropy_coeff: weight of the entropy bonus.
        critic_coeff: weight of the critic loss in the PPO loss (a passive planner's critic,
            which gives the agents their planner advantage, is fit alone with its own
            optimizer, unweighted).
        loss_critic_type: the critic's loss, ``"l2"`` (squared error), ``"l1"`` or
            ``"smooth_l1"``.
        gamma: discount of the advantages (GAE).
        lmbda: GAE lambda.
        epochs: passes over each iteration's data.
        minibatches: minibatches per pass: each pass samples the iteration's ``N``
            transitions without replacement in minibatches of ``N // minibatches``
            (``SamplerWithoutReplacement``; a remainder that fills no minibatch is left out).
        max_grad_norm: gradient-norm clip.
        hidden: units per hidden layer of the policy and the critic (``MultiAgentMLP``).
        depth: hidden layers; ``0`` makes a network linear in the observation (the ERMAS
            authors' bimatrix policies).
        critic_depth: the critic's depth, if it differs (``None``: ``depth``).
        policy_bias: whether the policy's output layer has a bias. A linear policy of
            concatenated one-hot observations does not need one (every one-hot block adds
            a weight row per value), and without it what is learned in some states cannot
            leak into unvisited ones through the shared bias.
        share_params: one network for all members of the group.
    """

    lr: float = 3e-3
    anneal_start: float = 1.0
    clip_epsilon: float = 0.2
    entropy_coeff: float = 0.01
    critic_coeff: float = 0.5
    loss_critic_type: str = "l2"
    gamma: float = 0.9
    lmbda: float = 0.9
    epochs: int = 4
    minibatches: int = 4
    max_grad_norm: float = 10.0
    hidden: int = 64
    depth: int = 2
    critic_depth: int | None = None
    policy_bias: bool = True
    share_params: bool = True


@dataclass
class ErmasConfig:
    """The ERMAS-specific settings: epsilon, the multipliers, the regret estimate, Reptile.

    ``epsilon`` and the regrets are in episode-return units (undiscounted sums of reward
    over ``regret_horizon`` steps).

    The deviation search weights actions by advantages discounted with ``regret_gamma``
    (``None``: the agents' ``gamma``) against a baseline: ``"critic"`` (the agents'
    value network) or ``"mean"`` (the mean reward-to-go per time step). Where the agents'
    discounted objective differs from their episode return, as with the concave utility
    of the economy, ``regret_gamma=1`` with ``"mean"`` points the search at the return
    itself.

    The multipliers (``lambda_*``) follow :class:`~torchrl_ermas.objectives.LagrangeMultiplier`:
    ``lambda_rule="nupi"`` (default, scale-free: ``lambda_lr`` is a step of the planner's
    weight ``1 / (1 + lambda)``) or ``"gradient_ascent"`` (the authors' rule: ``lambda_lr``
    is in lambda per unit of regret); either step decays to zero over the run's updates
    after the first ``lambda_anneal_start`` share of them (``1``: a constant step). The deviations (``trust_region``,
    ``deviation_steps`` per estimate, ``exploration``, the line search's ``confidence``) follow
    :class:`~torchrl_ermas.regret.ReptileRegretEstimator`; with ``deviation_optimizer="ppo"``
    they train like the agents, with the agents' ``lr``, ``epochs``, ``minibatches`` and
    ``clip_epsilon`` (and ``confidence`` keeps its default), and ``meta_scale`` (the paper's
    ``beta``, in ``[0, 1]``; ``0`` is off) the meta-gradient term of the agents' loss,
    :class:`~torchrl_ermas.regret.MetaGradient` (Eq. 13).
    """

    epsilon: float = 0.0
    lambda_init: float = default_of(LagrangeMultiplier, "init")
    lambda_lr: float = default_of(LagrangeMultiplier, "lr")
    lambda_max: float = default_of(LagrangeMultiplier, "max_value")
    lambda_rule: str = default_of(LagrangeMultiplier, "rule")
    lambda_kp: float = default_of(LagrangeMultiplier, "kp")
    lambda_nu: float = default_of(LagrangeMultiplier, "nu")
    lambda_scale_decay: float = default_of(LagrangeMultiplier, "scale_decay")
    lambda_noise_floor: float = default_of(LagrangeMultiplier, "noise_floor")
    lambda_max_violation: float = default_of(LagrangeMultiplier, "max_violation")
    lambda_sign_change_decay: float = default_of(LagrangeMultiplier, "sign_change_decay")
    lambda_sign_change_after: int = default_of(LagrangeMultiplier, "sign_change_after")
    lambda_anneal_start: float = default_of(LagrangeMultiplier, "anneal_start")
    warmup_iters: int = 10
    regret_interval: int = 5
    regret_envs: int = 32
    regret_horizon: int | None = None
    regret_gamma: float | None = None
    regret_baseline: str = "critic"
    trust_region: float = default_of(ReptileRegretEstimator, "trust_region")
    deviation_steps: int = default_of(ReptileRegretEstimator, "deviation_steps")
    exploration: float = default_of(ReptileRegretEstimator, "exploration")
    confidence: float = default_of(ReptileRegretEstimator, "confidence")
    deviation_optimizer: str = default_of(ReptileRegretEstimator, "deviation_optimizer")
    meta_scale: float = default_of(MetaGradient, "scale")


@dataclass
class RewardConfig:
    """Reward transforms of the training environment (the baselines' knobs).

    Attributes:
        q: reality gap ``Q``: agents earn ``r_i - q * r_p`` (:class:`PlannerRewardGap`).
        gap_key: where ``r_p`` is read: the planner's reward (default) or another key of
            the environment's output, e.g. ``[planner, payoff]`` for the bimatrix game's
            raw payoff table (the planner reward without the officer terms).
        dr_scale: domain randomization ``U[-dr_scale, dr_scale]`` added to each agent's
            reward (:class:`DomainRandomizedReward`); ``0`` disables it.
        dr_resample: ``"episode"`` or ``"step"``.
        rr_eta: risk robustness: the planner trains on the isoelastic transform of its
            reward (:class:`ConcavePlannerReward`); ``0`` disables it. Reported planner
            rewards are always the untransformed ones.
    """

    q: float = 0.0
    gap_key: list[str] = field(default_factory=lambda: ["planner", "reward"])
    dr_scale: float = 0.0
    dr_resample: str = "episode"
    rr_eta: float = 0.0


@dataclass
class LoggerConfig:
    """TorchRL logger: ``csv`` (default), ``tensorboard``, ``wandb`` or ``""`` (none)."""

    backend: str = "csv"
    project: str = "torchrl-ermas"
    exp_name: str | None = None


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        variant: ``ermas`` (full), ``fixed_lambda`` (lambda frozen at ``ermas.lambda_init``,
            no regret estimate) or ``marl`` (selfish agents: plain multi-agent PPO).
        env: a hydra node with ``_target_`` building the training environment; the
            trainer adds ``batch_size`` and ``device``.
        iterations: training iterations; each collects ``num_envs`` episodes. A run
            resumed with more iterations is extended: its annealed steps (each PPO group's
            ``anneal_start``, ``ermas.lambda_anneal_start``) follow the new budget, so a run
            that had annealed to its end steps again.
        train_planner: train the planner (``False`` freezes it, e.g. in transfer runs).
        planner_checkpoint: optional checkpoint whose planner is loaded before training.
        agents_checkpoint: optional checkpoint whose agents (policy and critic) start this
            run, e.g. agents trained first in a free market (the AI Economist's two-phase
            curriculum); their optimizer starts afresh.
        fixed_planner: optional hydra node (``_target_``) building a fixed planner policy
            that acts in place of a learned one (for example
            ``torchrl_ermas.envs.economy.SaezPlanner``); it is never trained, so it
            requires ``train_planner=False`` and no ``planner_checkpoint``.
        episode_metrics: root keys of the environment (one value per environment, such as
            ``"equality"``) whose values at the end of each rollout are averaged and
            recorded with the rewards in the history and the final metrics.
        output_dir: the run's folder (checkpoints, ``results.json``, logs). A folder that
            holds another run is refused unless ``resume`` or ``overwrite`` is set.
        resume: continue from ``output_dir``'s checkpoint (a fresh start if it has none).
            Only the settings of :data:`RESUMABLE_KEYS` may differ from the checkpoint's.
        overwrite: delete the run in ``output_dir`` (checkpoints, ``results.json``, its
            logs) and start anew.

    Nested nodes (``agents``, ``ermas``, ``logger``, ...) may be given as dicts.
    """

    env: Any = field(default_factory=lambda: {"_target_": "torchrl_ermas.envs.SequentialBimatrixEnv"})
    variant: str = "ermas"
    seed: int = 0
    device: str = "cpu"
    iterations: int = 100
    num_envs: int = 64
    rollout_steps: int | None = None
    train_planner: bool = True
    planner_checkpoint: str | None = None
    agents_checkpoint: str | None = None
    fixed_planner: Any = None
    episode_metrics: list[str] = field(default_factory=list)
    agents: PPOConfig = field(default_factory=PPOConfig)
    planner: PPOConfig = field(default_factory=lambda: PPOConfig(lr=1e-3, entropy_coeff=0.05))
    ermas: ErmasConfig = field(default_factory=ErmasConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "."
    checkpoint_interval: int = 10
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    history_window: int = 10


def check_device(device: str) -> None:
    """``device`` must name a torch device that this machine has.

    Examples:
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'gpu'.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}.") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be a cpu, cuda or mps device, got {device!r} ({parsed.type}).")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine; use device=cpu.")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}: CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use device=cpu."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")


#: the nested dataclass nodes of :class:`TrainConfig`
_NODES = ("agents", "planner", "ermas", "reward", "logger")


def as_config(*layers: TrainConfig | DictConfig | dict) -> TrainConfig:
    """``layers`` merged in order and type-checked against the :class:`TrainConfig` schema
    (unknown keys raise).

    A :class:`TrainConfig` may hold dicts in place of its nested nodes.

    Examples:
        >>> as_config(TrainConfig(agents={"lr": 0.01})).agents.lr
        0.01
        >>> as_config({"ermas": {"epsilon": 2}}, {"seed": 3}).ermas.epsilon
        2.0
    """
    layers = [asdict(layer) if isinstance(layer, TrainConfig) else layer for layer in layers]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), *layers))


#: LagrangeMultiplier argument -> its ErmasConfig field
LAMBDA_FIELDS = {
    "init": "lambda_init",
    "lr": "lambda_lr",
    "max_value": "lambda_max",
    "rule": "lambda_rule",
    "kp": "lambda_kp",
    "nu": "lambda_nu",
    "scale_decay": "lambda_scale_decay",
    "noise_floor": "lambda_noise_floor",
    "max_violation": "lambda_max_violation",
    "sign_change_decay": "lambda_sign_change_decay",
    "sign_change_after": "lambda_sign_change_after",
    "anneal_start": "lambda_anneal_start",
}


def lagrange_kwargs(ermas: ErmasConfig) -> dict[str, Any]:
    """The :class:`~torchrl_ermas.objectives.LagrangeMultiplier` arguments of ``ermas``.

    Examples:
        >>> lagrange_kwargs(ErmasConfig(lambda_init=8.0))["init"]
        8.0
    """
    return {arg: getattr(ermas, field) for arg, field in LAMBDA_FIELDS.items()}


def multiplier_updates(cfg: TrainConfig) -> int:
    """How often an ``ermas`` run estimates its regret and moves its multipliers: after
    every ``ermas.regret_interval``-th iteration from ``ermas.warmup_iters`` on (the
    multipliers' ``total_updates``).

    Examples:
        >>> multiplier_updates(TrainConfig(iterations=80, ermas=ErmasConfig(warmup_iters=10, regret_interval=2)))
        35
    """
    e = cfg.ermas
    return len(range(e.warmup_iters, cfg.iterations, e.regret_interval))


def _check_as(group: str, fields: dict[str, str], build: Callable[[], object]) -> None:
    """Runs a constructor's own argument checks; the error names the config field."""
    try:
        build()
    except ValueError as err:
        field = fields.get(str(err).split(" ", 1)[0])
        if field is None:
            raise
        raise ValueError(f"{group}.{field}: {err}") from None


def validate(cfg: TrainConfig | DictConfig | dict) -> None:
    """Raises a ``ValueError`` naming the first invalid setting of ``cfg``."""
    if not isinstance(cfg, TrainConfig) or any(isinstance(getattr(cfg, n), dict) for n in _NODES):
        cfg = as_config(cfg)
    check_choice("variant", cfg.variant, tuple(VARIANTS))
    check_seed("seed", cfg.seed)
    check_device(cfg.device)
    for name in ("iterations", "num_envs", "checkpoint_interval", "history_window"):
        check_int(name, getattr(cfg, name), 1)
    check_int("rollout_steps", cfg.rollout_steps, 1, optional=True)
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume and overwrite exclude each other; set at most one of them.")
    for group in ("agents", "planner"):
        _validate_ppo(group, getattr(cfg, group))
    _validate_planner(cfg)
    _validate_ermas(cfg)
    _validate_reward(cfg.reward)
    _validate_logger(cfg.logger)


def _validate_ppo(group: str, ppo: PPOConfig) -> None:
    for name in ("lr", "max_grad_norm"):
        check_number(f"{group}.{name}", getattr(ppo, name))
    check_real(f"{group}.anneal_start", ppo.anneal_start, low=0, high=1)
    check_real(f"{group}.clip_epsilon", ppo.clip_epsilon, low=0, high=1, low_inclusive=False, high_inclusive=False)
    for name in ("entropy_coeff", "critic_coeff"):
        check_number(f"{group}.{name}", getattr(ppo, name), strict=False)
    for name in ("gamma", "lmbda"):
        check_real(f"{group}.{name}", getattr(ppo, name), low=0, low_inclusive=False, high=1)
    for name in ("epochs", "minibatches", "hidden"):
        check_int(f"{group}.{name}", getattr(ppo, name), 1)
    check_int(f"{group}.depth", ppo.depth, 0)
    check_choice(f"{group}.loss_critic_type", ppo.loss_critic_type, CRITIC_LOSS_TYPES)
    check_int(f"{group}.critic_depth", ppo.critic_depth, 0, optional=True)


def _validate_planner(cfg: TrainConfig) -> None:
    for name in ("planner_checkpoint", "agents_checkpoint"):
        path = getattr(cfg, name)
        if path is not None and not path:
            raise ValueError(f"{name} must be None or the path of a checkpoint, got ''.")
        if path and Path(path).parent.resolve() == Path(cfg.output_dir).resolve():
            raise ValueError(
                f"{name} {path!r} lies in output_dir {cfg.output_dir!r}: a run that loads "
                "another run's networks needs an output_dir of its own (it would resume or "
                "overwrite the run that wrote them)."
            )
    if cfg.fixed_planner is not None and not (isinstance(cfg.fixed_planner, dict) and "_target_" in cfg.fixed_planner):
        raise ValueError(
            "fixed_planner must be None or a hydra node with a _target_ (e.g. "
            f"{{'_target_': 'torchrl_ermas.envs.economy.SaezPlanner'}}), got {cfg.fixed_planner!r}."
        )
    if cfg.fixed_planner is not None and (cfg.train_planner or cfg.planner_checkpoint):
        raise ValueError(
            "fixed_planner is never trained: it requires train_planner=False and "
            f"planner_checkpoint=None, got train_planner={cfg.train_planner!r}, "
            f"planner_checkpoint={cfg.planner_checkpoint!r}."
        )


def _validate_ermas(cfg: TrainConfig) -> None:
    e = cfg.ermas
    check_real("ermas.epsilon", e.epsilon)
    _check_as("ermas", LAMBDA_FIELDS, lambda: LagrangeMultiplier(1, **lagrange_kwargs(e)))
    check_real("ermas.meta_scale", e.meta_scale, low=0, high=1)
    check_int("ermas.warmup_iters", e.warmup_iters, 0)
    if VARIANTS[cfg.variant].estimates_regret and e.warmup_iters >= cfg.iterations:
        raise ValueError(
            f"variant=ermas estimates regret first at iteration ermas.warmup_iters, so it "
            f"must be < iterations={cfg.iterations}, got {e.warmup_iters} (the run would "
            "never estimate regret: use variant=fixed_lambda for frozen multipliers)."
        )
    for name in ("regret_interval", "regret_envs", "deviation_steps"):
        check_int(f"ermas.{name}", getattr(e, name), 1)
    check_int("ermas.regret_horizon", e.regret_horizon, 1, optional=True)
    if e.regret_gamma is not None and not 0 < e.regret_gamma <= 1:
        raise ValueError(f"ermas.regret_gamma must be None or in (0, 1], got {e.regret_gamma!r}.")
    if e.regret_baseline not in ("critic", "mean"):
        raise ValueError(f"ermas.regret_baseline must be 'critic' or 'mean', got {e.regret_baseline!r}.")
    check_number("ermas.trust_region", e.trust_region)
    check_real("ermas.exploration", e.exploration, low=0, high=1, high_inclusive=False)
    check_real("ermas.confidence", e.confidence, low=0)
    check_choice("ermas.deviation_optimizer", e.deviation_optimizer, DEVIATION_OPTIMIZERS)
    if e.deviation_optimizer == "ppo" and e.confidence != default_of(ReptileRegretEstimator, "confidence"):
        raise ValueError(
            f"ermas.confidence={e.confidence!r} sets the line search, which "
            "ermas.deviation_optimizer='ppo' does not use."
        )


def _validate_reward(r: RewardConfig) -> None:
    check_real("reward.q", r.q)
    if not r.gap_key or not all(isinstance(k, str) and k for k in r.gap_key):
        raise ValueError(f"reward.gap_key must be a non-empty list of names, got {r.gap_key!r}.")
    check_number("reward.dr_scale", r.dr_scale, strict=False)
    check_number("reward.rr_eta", r.rr_eta, strict=False)
    if r.dr_resample not in ("episode", "step"):
        raise ValueError(f"reward.dr_resample must be 'episode' or 'step', got {r.dr_resample!r}.")


def _validate_logger(logger: LoggerConfig) -> None:
    if logger.backend not in ("", "csv", "tensorboard", "wandb"):
        raise ValueError(f"logger.backend must be one of '', 'csv', 'tensorboard', 'wandb', got {logger.backend!r}.")
    name = logger.exp_name
    if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
        raise ValueError(
            f"logger.exp_name must be None (variant_seed) or a folder name without path separators, got {name!r}."
        )
    if not logger.project:
        raise ValueError(f"logger.project must be a non-empty name, got {logger.project!r}.")


def register_configs(name: str = "train_schema") -> None:
    """Registers :class:`TrainConfig` in hydra's ConfigStore under ``name``.

    A yaml config then starts with ``defaults: [train_schema, _self_]``.
    """
    ConfigStore.instance().store(name=name, node=TrainConfig)
