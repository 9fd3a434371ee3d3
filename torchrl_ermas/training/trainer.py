"""The ERMAS training loop (Planner-OPT around Agent-Adv-Search) and its baselines."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import LossModule, ValueEstimators
from torchrl.objectives.multiagent import MAPPOLoss
from torchrl.record.loggers import get_logger
from tqdm.auto import tqdm

from torchrl_ermas.objectives import PlannerAdvantage
from torchrl_ermas.regret import MetaGradient, ReptileRegretEstimator, persistent_env_state, seed_env
from torchrl_ermas.regret.reptile import PPO_SETTINGS
from torchrl_ermas.schedule import anneal_share
from torchrl_ermas.transforms import (
    ConcavePlannerReward,
    DomainRandomizedReward,
    PlannerRewardGap,
)

from .checkpoint import (
    CheckpointError,
    atomic_write,
    component_state,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from .config import PPOConfig, TrainConfig, as_config, lagrange_kwargs, multiplier_updates, validate
from .models import has_action, make_critic, make_policy
from .run_folder import RunFolder, check_resumable, check_state_fits, non_finite_entry
from .variants import VARIANTS


class NonFiniteError(FloatingPointError):
    """A loss or a parameter became NaN or infinite; the run stopped."""


def check_finite_estimate(result: TensorDictBase, where: str = "") -> None:
    """Raises :class:`NonFiniteError` for a non-finite regret or KL in a regret estimate."""
    for name in ("regret", "kl"):
        if not torch.isfinite(result[name]).all():
            raise NonFiniteError(f"non-finite {name} estimate {result[name].tolist()}{where}")


def continue_env_state(
    training_env: EnvBase, estimator_env: EnvBase, *, training_runs: int = 1, runs: Sequence[int] = (0,)
) -> None:
    """Gives the estimator's environments the training environments' per-environment state
    (:func:`~torchrl_ermas.regret.persistent_env_state`, e.g. the economy's curricula).

    The training batch holds ``training_runs`` runs' environments in contiguous chunks, the
    estimator's batch the deviation worlds of the training runs ``runs``, in that order;
    environment ``j`` of a run's estimator chunk takes the state of its training environment
    ``j % num_envs``.
    """
    training = persistent_env_state(training_env)
    for name, buffer in persistent_env_state(estimator_env).items():
        source = training[name].unflatten(0, (training_runs, -1))[list(runs)]
        target = buffer.unflatten(0, (len(runs), -1))
        index = torch.arange(target.shape[1], device=source.device) % source.shape[1]
        target.copy_(source[:, index])


def risk_robust_reward(etas: Sequence[float], device: torch.device) -> ConcavePlannerReward | None:
    """The RR transform of the planner rewards ``[R, ...]`` of runs with ``reward.rr_eta``
    ``etas``: ``None`` if no run has one, their common eta (a run alone), or one per run."""
    if not any(eta > 0 for eta in etas):
        return None
    if len(set(etas)) == 1:
        return ConcavePlannerReward(etas[0])
    return ConcavePlannerReward(torch.tensor(list(etas), device=device))


def _group_keys(group: str) -> dict[str, tuple[str, str]]:
    names = ("advantage", "value_target", "reward", "action")
    keys = {name: (group, name) for name in names}
    keys.update(value=(group, "state_value"), sample_log_prob=(group, "action_log_prob"))
    return keys


def episode_collector(env: EnvBase, policy: nn.Module, frames: int, device: torch.device) -> Collector:
    """A :class:`~torchrl.collectors.Collector` of one fresh episode per environment and
    batch of ``frames`` transitions (the environment is re-seeded before each batch); a new
    batch each time, so no key of the previous iteration's data (advantages, value
    targets) survives into the next. It acts with ``policy`` itself, never a copy."""
    collector = Collector(
        env,
        policy,
        frames_per_batch=frames,
        total_frames=-1,
        reset_at_each_iter=True,
        exploration_type=ExplorationType.RANDOM,
        device=device,
        use_buffers=False,
        auto_register_policy_transforms=False,
    )
    if collector.policy is not policy:  # a copy would not train
        raise RuntimeError(
            f"the collector copied the policy (its parameters are not all on device "
            f"{device}); build the networks on the run's device."
        )
    return collector


def ppo_loss_settings(ppo: PPOConfig) -> dict[str, Any]:
    """The keyword arguments of a group's PPO loss from its settings.

    Examples:
        >>> sorted(ppo_loss_settings(PPOConfig()))
        ['clip_epsilon', 'critic_coeff', 'entropy_coeff', 'loss_critic_type']
    """
    return {
        "clip_epsilon": ppo.clip_epsilon,
        "entropy_coeff": ppo.entropy_coeff,
        "critic_coeff": ppo.critic_coeff,
        "loss_critic_type": ppo.loss_critic_type,
    }


def planner_advantage(critic: nn.Module, ppo: PPOConfig) -> PlannerAdvantage:
    """The planner's advantage estimate on ``critic`` with the planner's PPO settings."""
    return PlannerAdvantage(critic, gamma=ppo.gamma, lmbda=ppo.lmbda, loss_critic_type=ppo.loss_critic_type)


def minibatch_buffers(
    cfg: TrainConfig, groups: Iterable[str], frames: int, device: torch.device
) -> dict[str, TensorDictReplayBuffer]:
    """One replay buffer per group over one storage of an iteration's ``frames``
    transitions, each with its group's minibatch size and its own :class:`PassSampler`."""
    storage = LazyTensorStorage(frames, device=device)
    return {
        group: TensorDictReplayBuffer(
            storage=storage, sampler=PassSampler(), batch_size=frames // getattr(cfg, group).minibatches
        )
        for group in groups
    }


class PassSampler(SamplerWithoutReplacement):
    """:class:`~torchrl.data.SamplerWithoutReplacement` (``drop_last``) that draws each pass's
    permutation when the pass starts.

    TorchRL's sampler draws the next pass's permutation as soon as a pass ends, one draw of
    the global random stream more per update than there are passes; drawing it at the start
    keeps the minibatches those of one ``torch.randperm`` per epoch and leaves the random
    stream after the last pass untouched.

    Examples:
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> from tensordict import TensorDict
        >>> buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(10), sampler=PassSampler(), batch_size=3)
        >>> _ = buffer.extend(TensorDict({"x": torch.arange(10)}, [10]))
        >>> [len(batch) for batch in buffer]  # one pass: 3 minibatches, the remaining 1 left out
        [3, 3, 3]
    """

    def __init__(self) -> None:
        super().__init__(drop_last=True)

    def _single_sample(self, len_storage: int, batch_size: int) -> torch.Tensor:
        index = self._sample_list[:batch_size]
        self._sample_list = self._sample_list[batch_size:]
        self._remaining_batches = self._sample_list.numel() // batch_size
        self.ran_out = self._remaining_batches == 0
        if self.ran_out:
            self._sample_list = None  # the next pass draws its permutation when it starts
        return index


def _check_layout(state: dict[str, Any], path: Path) -> None:
    """Refuses a checkpoint of the layout before one entry per component (its modules were
    the losses, ``agents.*`` and ``planner.*``, beside a top-level ``planner_policy``)."""
    if "planner_policy" in state or any(key.startswith(("agents.", "planner.")) for key in state["modules"]):
        raise CheckpointError(
            f"{path} was written by an earlier version of torchrl-ermas, whose checkpoints "
            "stored the losses instead of one entry per component; it cannot be resumed or "
            "loaded: re-run it (overwrite=true)."
        )


class ErmasTrainer:
    """Trains agents and a planner with ERMAS or one of its baselines.

    Each iteration:

    1. collects ``num_envs`` episodes with the agent and planner policies through a TorchRL
       :class:`~torchrl.collectors.Collector` (the environment is re-seeded from ``seed`` and
       the iteration, so a resumed run replays exactly);
    2. computes the agents' own advantages (multi-agent GAE on their critic) and the
       planner's advantage (GAE on the planner critic);
    3. updates the planner with PPO on its own reward and the agents with
       :class:`~torchrl_ermas.objectives.ErmasLoss` (``marl``: plain
       :class:`~torchrl.objectives.multiagent.MAPPOLoss`), one after the other on the same data, in minibatches
       drawn from a :class:`~torchrl.data.TensorDictReplayBuffer` of the iteration's
       transitions, one pass per epoch without replacement (:class:`PassSampler`);
    4. (``ermas``) every ``ermas.regret_interval`` iterations after the warm-up: estimates
       each agent's regret with :class:`~torchrl_ermas.regret.ReptileRegretEstimator`,
       updates the multipliers ``lambda`` and, with ``ermas.meta_scale > 0``, the
       meta-gradient term of the agents' loss (:class:`~torchrl_ermas.regret.MetaGradient`)
       for the updates until the next estimate.

    Variants (``cfg.variant``, a :class:`~torchrl_ermas.training.variants.Variant`):
    ``ermas`` (learned lambda; the meta-gradient term is on when ``ermas.meta_scale > 0``);
    ``fixed_lambda`` (lambda frozen at ``ermas.lambda_init``, no regret estimate); ``marl``
    (no lambda: selfish agents). Domain randomization and risk robustness are the reward
    transforms of ``cfg.reward``.

    Checkpoints are written atomically every ``checkpoint_interval`` iterations to
    ``output_dir/checkpoint.pt``, the one before kept as ``checkpoint.prev.pt``; with
    ``resume=True`` the run continues from the newest that loads, provided its stored
    configuration matches ``cfg`` (only :data:`~torchrl_ermas.training.config.RESUMABLE_KEYS`
    may differ). Before any work the trainer checks that ``output_dir`` is writable,
    removes the temporary files of writes that a kill interrupted, and refuses a folder
    that holds another run unless ``resume`` or ``overwrite`` is set. Each run writes
    ``output_dir/results.json`` (strict JSON; see the README for the schema).

    Args:
        cfg (TrainConfig or DictConfig or dict): the run configuration.
        env_fn (callable, optional): ``env_fn(batch_size, device) -> EnvBase`` building a
            batched environment that follows the torchrl-ermas contract. Defaults to
            instantiating ``cfg.env`` (a hydra ``_target_`` node).

    Examples:
        >>> import tempfile
        >>> from torchrl_ermas.training import ErmasTrainer, TrainConfig
        >>> cfg = TrainConfig(iterations=2, num_envs=8, progress=False, variant="marl",
        ...                   output_dir=tempfile.mkdtemp(), logger={"backend": ""},
        ...                   env={"_target_": "torchrl_ermas.envs.SequentialBimatrixEnv",
        ...                        "max_steps": 20})
        >>> trainer = ErmasTrainer(cfg)  # nested nodes may be dicts, as ``logger`` here
        >>> trainer.cfg.logger
        LoggerConfig(backend='', project='torchrl-ermas', exp_name=None)
        >>> sorted(trainer.train()["final"])
        ['agent_reward', 'combined_agent_reward', 'lambda', 'planner_reward', 'regret']
    """

    def __init__(
        self,
        cfg: TrainConfig | DictConfig | dict,
        env_fn: Callable[[int, torch.device], EnvBase] | None = None,
    ) -> None:
        cfg = as_config(cfg)
        validate(cfg)
        if env_fn is None and not (isinstance(cfg.env, dict) and "_target_" in cfg.env):
            raise ValueError(
                "env must be a hydra node with a _target_ building the environment, e.g. "
                "{'_target_': 'torchrl_ermas.envs.SequentialBimatrixEnv'}, or env_fn must "
                f"be given; got env={cfg.env!r}."
            )
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.output_dir = Path(cfg.output_dir)
        self.folder = RunFolder(self.output_dir, self._log_dir() / self._experiment_name())
        self.folder.prepare(resume=cfg.resume, overwrite=cfg.overwrite)
        self._env_fn = env_fn or self._instantiate_env
        torch.manual_seed(cfg.seed)

        self.env = self._make_env(cfg.num_envs)
        self.horizon = cfg.rollout_steps or getattr(self.env.base_env, "max_steps", None)
        if self.horizon is None:
            raise ValueError("rollout_steps must be set for environments without max_steps.")
        self._check_minibatches()
        self.n_agents = self.env.full_action_spec["agents", "action"].shape[-1]
        self.planner_acts = has_action(self.env, "planner")
        self.variant = VARIANTS[cfg.variant]

        self.modules = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._build_agents()
        self._build_planner()
        self.rr = risk_robust_reward([cfg.reward.rr_eta], self.device)
        self.collection_policy = TensorDictSequential(
            *([self.planner_policy] if self.planner_acts else []), self.agent_policy
        )
        self._build_collection()
        self._check_episode_metrics()
        columns = ("iteration", "planner_reward", "agent_reward", *cfg.episode_metrics, "lambda", "regret", "kl")
        self.history: dict[str, list] = {name: [] for name in (*columns, "time_collect", "time_train", "time_regret")}
        self.start_iteration = 0
        self._config_json = json.dumps(self._config_dict())
        #: extra final metrics written to ``results.json`` (e.g. by an experiment hook)
        self.extra_final: dict[str, Any] = {}
        if cfg.planner_checkpoint:
            self.load_planner(cfg.planner_checkpoint)
        if cfg.agents_checkpoint:
            self.load_agents(cfg.agents_checkpoint)
        self._resume_or_start()

    # ------------------------------------------------------------------ construction
    def _check_minibatches(self) -> None:
        """Each pass over the ``N`` transitions must give exactly ``minibatches`` minibatches
        of ``N // minibatches`` (fewer remaining transitions than one minibatch)."""
        frames = self.cfg.num_envs * self.horizon
        for group in ("agents", "planner"):
            minibatches = getattr(self.cfg, group).minibatches
            if minibatches > frames:
                raise ValueError(
                    f"{group}.minibatches={minibatches} exceeds the {frames} transitions collected per iteration."
                )
            if frames // (frames // minibatches) != minibatches:
                raise ValueError(
                    f"{group}.minibatches={minibatches} does not split the {frames} transitions "
                    f"of an iteration into {minibatches} minibatches of {frames // minibatches} "
                    f"(a pass would take {frames // (frames // minibatches)}): choose a divisor "
                    f"of {frames}."
                )

    def _resume_or_start(self) -> None:
        """Clears the folder (``overwrite``) or restores the newest readable checkpoint
        (``resume``); the log rows of iterations after it are replayed."""
        cfg = self.cfg
        if cfg.overwrite:
            self.folder.remove()
        found = load_latest_checkpoint(self.folder.checkpoint, self.device) if cfg.resume else None
        if found is not None:
            self._restore(*found)
            if found[1] != self.folder.checkpoint and self.folder.checkpoint.exists():
                self.folder.set_aside_unreadable()
        if cfg.resume:  # the rows of iterations after the checkpoint are replayed
            self.folder.truncate_csv_log(self.start_iteration)

    def _instantiate_env(self, batch_size: int, device: torch.device) -> EnvBase:
        return instantiate(self.cfg.env, batch_size=batch_size, device=device)

    def _make_env(
        self, batch_size: int, q: float | torch.Tensor | None = None, dr_scale: float | torch.Tensor | None = None
    ) -> TransformedEnv:
        """``batch_size`` environments with the reward transforms of ``cfg.reward``; ``q`` and
        ``dr_scale`` (numbers, or one value per environment) replace ``reward.q`` and
        ``reward.dr_scale``."""
        reward = self.cfg.reward
        q = reward.q if q is None else q
        dr_scale = reward.dr_scale if dr_scale is None else dr_scale
        env = self._env_fn(batch_size, self.device)
        transforms = []
        if bool((torch.as_tensor(q) != 0).any()):
            gap_key = tuple(reward.gap_key)
            outputs = [*env.full_observation_spec.keys(True, True), *env.reward_keys]
            if gap_key not in outputs:
                raise ValueError(
                    f"reward.gap_key {list(gap_key)} is not an output of the environment; its outputs are {outputs}."
                )
            transforms.append(PlannerRewardGap(q, planner_reward_key=gap_key))
        if bool((torch.as_tensor(dr_scale) > 0).any()):
            transforms.append(DomainRandomizedReward(dr_scale, resample=reward.dr_resample))
        return TransformedEnv(env, Compose(*transforms), auto_unwrap=True)

    def _check_episode_metrics(self) -> None:
        available = [
            key
            for key, spec in self.env.full_observation_spec.items()
            if not isinstance(key, tuple) and spec.shape == (*self.env.batch_size, 1)
        ]
        for key in self.cfg.episode_metrics:
            if key not in available:
                raise ValueError(
                    f"episode_metrics: {key!r} is not a per-environment root key of the "
                    f"environment; available: {available}."
                )

    def _ppo_loss(self, make: Callable[..., LossModule], actor, critic, ppo: PPOConfig, group: str):
        """``make(actor, critic, **PPO settings)``, keyed to ``group`` and with its GAE."""
        loss = make(actor, critic, **ppo_loss_settings(ppo))
        loss.set_keys(**_group_keys(group))
        loss.make_value_estimator(ValueEstimators.MAGAE, gamma=ppo.gamma, lmbda=ppo.lmbda)
        return loss

    def _build_agents(self) -> None:
        cfg = self.cfg
        self.agent_policy = make_policy(self.env, "agents", cfg.agents, self.device)
        self.agent_critic = critic = make_critic(self.env, "agents", cfg.agents, self.device)
        self.lagrange = self.variant.make_multipliers(
            self.n_agents,
            {**lagrange_kwargs(cfg.ermas), "total_updates": multiplier_updates(cfg) or None},
            frozen_at_start=cfg.ermas.warmup_iters > 0,
        )
        if self.lagrange is not None:
            self.lagrange = self.lagrange.to(self.device)
        loss = self._ppo_loss(
            partial(self.variant.make_agent_loss, lagrange=self.lagrange),
            self.agent_policy,
            critic,
            cfg.agents,
            "agents",
        )
        self.agent_loss = loss
        self.modules["agent_policy"] = self.agent_policy
        self.modules["agent_critic"] = critic
        if self.lagrange is not None:
            self.modules["lagrange"] = self.lagrange
        self.meta = None
        if self.variant.estimates_regret and cfg.ermas.meta_scale > 0:
            self.meta = MetaGradient(TensorDict.from_module(self.agent_policy), scale=cfg.ermas.meta_scale)
            self.modules["meta_gradient"] = self.meta
        self.optimizers["agents"] = torch.optim.Adam(self._trainable(loss), lr=cfg.agents.lr)

    def _build_planner(self) -> None:
        cfg = self.cfg
        if cfg.fixed_planner is not None:
            if not self.planner_acts:
                raise ValueError("fixed_planner is set but the planner of this env has no action.")
            self.planner_policy = instantiate(cfg.fixed_planner).to(self.device)
        elif self.planner_acts:
            self.planner_policy = make_policy(self.env, "planner", cfg.planner, self.device)
        else:
            self.planner_policy = None
        self.planner_loss = None
        self.planner_critic = None
        self.planner_advantage = None
        if self.planner_policy is not None:
            self.modules["planner_policy"] = self.planner_policy
        needs_critic = self.variant.uses_planner_advantage or (self.planner_acts and cfg.train_planner)
        if not needs_critic:
            return
        self.planner_critic = make_critic(self.env, "planner", cfg.planner, self.device)
        self.planner_advantage = planner_advantage(self.planner_critic, cfg.planner)
        if self.planner_acts and cfg.train_planner:
            loss = self._ppo_loss(MAPPOLoss, self.planner_policy, self.planner_critic, cfg.planner, "planner")
            self.planner_loss = loss
            params = self._trainable(loss)
        else:
            params = list(self.planner_critic.parameters())
        self.modules["planner_critic"] = self.planner_critic
        self.optimizers["planner"] = torch.optim.Adam(params, lr=cfg.planner.lr)

    def _build_collection(self) -> None:
        """The collector of the training episodes and the replay buffers of the PPO epochs."""
        cfg = self.cfg
        frames = cfg.num_envs * self.horizon
        self.collector = episode_collector(self.env, self.collection_policy, frames, self.device)
        self.buffers = minibatch_buffers(cfg, self.optimizers, frames, self.device)

    @staticmethod
    def _trainable(loss) -> list[torch.Tensor]:
        return list(loss.actor_network_params.values(True, True)) + list(loss.critic_network_params.values(True, True))

    def _deviation_ppo_settings(self) -> dict[str, float] | None:
        """The agents' PPO settings, with which PPO deviations train (``None`` otherwise)."""
        if self.cfg.ermas.deviation_optimizer != "ppo":
            return None
        return {name: getattr(self.cfg.agents, name) for name in PPO_SETTINGS}

    @cached_property
    def estimator(self) -> ReptileRegretEstimator | None:
        """The run's regret estimator and its deviation worlds (``None`` for variants without
        regret estimates), built at its first use: the runs of a
        :class:`~torchrl_ermas.training.population.PopulationTrainer` estimate in the
        population's batched estimator and never build their own."""
        if not self.variant.estimates_regret:
            return None
        return self.make_estimator(
            self.agent_policy,
            self._make_env(self.cfg.ermas.regret_envs * self.n_agents),
            planner_policy=self.planner_policy,
            critic=self.agent_critic,
        )

    def make_estimator(
        self,
        actor: nn.Module,
        env: EnvBase,
        *,
        planner_policy: nn.Module | None,
        critic: nn.Module,
        deviation_lr: torch.Tensor | None = None,
    ) -> ReptileRegretEstimator:
        """The regret estimator of ``cfg.ermas`` for ``actor`` in ``env``, with ``critic`` as
        the deviations' baseline (``ermas.regret_baseline: critic``); ``deviation_lr`` (one
        rate per deviation world) replaces ``agents.lr`` for PPO deviations."""
        e = self.cfg.ermas
        ppo_kwargs = self._deviation_ppo_settings()
        if deviation_lr is not None:
            if ppo_kwargs is None:
                raise ValueError(
                    f"deviation_lr applies to ermas.deviation_optimizer='ppo' only, got {e.deviation_optimizer!r}."
                )
            ppo_kwargs["lr"] = deviation_lr
        return ReptileRegretEstimator(
            actor,
            env,
            planner_policy=planner_policy,
            value_network=critic if e.regret_baseline == "critic" else None,
            gamma=self.cfg.agents.gamma if e.regret_gamma is None else e.regret_gamma,
            horizon=e.regret_horizon if e.regret_horizon is not None else self.horizon,
            trust_region=e.trust_region,
            deviation_steps=e.deviation_steps,
            exploration=e.exploration,
            confidence=e.confidence,
            deviation_optimizer=e.deviation_optimizer,
            ppo_kwargs=ppo_kwargs,
            meta_gradient=self.meta is not None,
            seed=self.cfg.seed,
        )

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Runs the remaining iterations and returns the content of ``results.json``."""
        cfg = self.cfg
        logger = self._logger()
        bar = tqdm(
            range(self.start_iteration, cfg.iterations),
            initial=self.start_iteration,
            total=cfg.iterations,
            disable=not cfg.progress,
            desc=cfg.variant,
        )
        for iteration in bar:
            good_state = self._good_state(iteration)
            try:
                row = self._iteration(iteration)
            except NonFiniteError as err:
                path = save_checkpoint(good_state, self.folder.checkpoint, keep_previous=True)
                raise NonFiniteError(
                    f"{err} at iteration {iteration}; the last good state "
                    f"(before iteration {iteration}) is saved in {path}."
                ) from None
            self._record(row, logger)
            bar.set_postfix(
                planner=f"{row['planner_reward']:.2f}",
                agents=f"{sum(row['agent_reward']):.2f}",
            )
            self._checkpoint_after(iteration)
        return self.write_results()

    def _good_state(self, iteration: int) -> dict[str, Any]:
        """:meth:`state` before ``iteration``, its parameters, optimizer and environment states
        copied (they are live references; the history is only appended to once an iteration
        succeeds)."""
        good_state = self.state(iteration)
        for key in ("modules", "optimizers", "env"):
            good_state[key] = copy.deepcopy(good_state[key])
        return good_state

    def _record(self, row: dict[str, Any], logger) -> None:
        """Appends an iteration's ``row`` to the history and logs it (``logger`` may be ``None``)."""
        for name, value in row.items():
            self.history[name].append(value)
        if logger is not None:
            self._log(logger, row)

    def _checkpoint_after(self, iteration: int) -> None:
        """Saves the checkpoint when ``iteration`` ends a checkpoint interval or the run."""
        cfg = self.cfg
        if (iteration + 1) % cfg.checkpoint_interval == 0 or iteration + 1 == cfg.iterations:
            save_checkpoint(self.state(iteration + 1), self.folder.checkpoint, keep_previous=True)

    def _iteration_seed(self, iteration: int) -> int:
        return (self.cfg.seed * 1_000_003 + iteration * 7919) % (2**31 - 1)

    def _anneal_learning_rates(self, iteration: int) -> None:
        """Sets each group's learning rate for ``iteration`` (``PPOConfig.anneal_start``)."""
        for group, optimizer in self.optimizers.items():
            ppo = getattr(self.cfg, group)
            share = anneal_share(iteration, self.cfg.iterations, ppo.anneal_start)
            for param_group in optimizer.param_groups:
                param_group["lr"] = ppo.lr * share

    def _iteration(self, iteration: int) -> dict[str, Any]:
        self._anneal_learning_rates(iteration)
        seed = self._iteration_seed(iteration)
        torch.manual_seed(seed)
        start = time.perf_counter()
        data = self._collect(seed)
        row = self._metrics(data, iteration)
        row["time_collect"] = time.perf_counter() - start

        start = time.perf_counter()
        self._advantages(data)
        self._update(data)
        row["time_train"] = time.perf_counter() - start

        start = time.perf_counter()
        row.update(self._adversarial_search(iteration, seed))
        row["time_regret"] = time.perf_counter() - start
        return row

    @torch.no_grad()
    def _collect(self, seed: int) -> TensorDictBase:
        """``num_envs`` episodes of ``horizon`` steps, ``[num_envs, horizon]``."""
        seed_env(self.env, seed)
        return self.collector.rollout()

    def _metrics(self, data: TensorDictBase, iteration: int) -> dict[str, Any]:
        planner = data.get(("next", "planner", "reward")).sum(1).mean()
        agents = data.get(("next", "agents", "reward")).sum(1).mean(0).flatten()
        lagrange = self.lagrange.value.tolist() if self.lagrange is not None else None
        episode = {key: data.get(("next", key))[:, -1].mean() for key in self.cfg.episode_metrics}
        for name, value in {"planner reward": planner, "agent rewards": agents, **episode}.items():
            if not torch.isfinite(value).all():
                raise NonFiniteError(f"non-finite {name} {value.tolist()} in the collected episodes")
        return {
            "iteration": iteration,
            "planner_reward": planner.item(),
            "agent_reward": agents.tolist(),
            **{key: value.item() for key, value in episode.items()},
            "lambda": lagrange,
            "regret": None,
            "kl": None,
        }

    @torch.no_grad()
    def _advantages(self, data: TensorDictBase) -> None:
        if self.planner_advantage is not None:
            if self.rr is not None:
                self.rr(data)
            self.planner_advantage(data)
        loss = self.agent_loss
        loss.value_estimator(
            data,
            params=loss.critic_network_params,
            target_params=loss.target_critic_network_params,
        )

    def _update(self, data: TensorDictBase) -> None:
        """PPO epochs on the iteration's transitions: the agents, then the planner."""
        flat = data.reshape(-1)
        steps = [("agents", self.agent_loss, self.cfg.agents)]
        if "planner" in self.optimizers:
            steps.append(("planner", self.planner_loss, self.cfg.planner))
        for buffer in self.buffers.values():  # clears the shared storage and each sampler
            buffer.empty()
        self.buffers["agents"].extend(flat)
        for group, loss_module, ppo in steps:
            optimizer, params, buffer = self.optimizers[group], self._params(group), self.buffers[group]
            for _ in range(ppo.epochs):
                for batch in buffer:  # one pass without replacement
                    loss = self._loss(group, loss_module, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
                    optimizer.step()
            self._check_finite_params(group)

    def _params(self, group: str) -> list[torch.Tensor]:
        return [p for g in self.optimizers[group].param_groups for p in g["params"]]

    def _loss(self, group: str, loss_module, batch: TensorDictBase) -> torch.Tensor:
        if loss_module is None:  # the planner critic alone
            losses = dict(self.planner_advantage.loss(batch).items())
        else:
            out = loss_module(batch)
            losses = {k: v for k, v in out.items() if k.startswith("loss_")}
            if group == "agents" and self.meta is not None:
                losses["loss_meta"] = self.meta(loss_module.actor_network_params)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise NonFiniteError(f"non-finite {group} {name} ({value.item()})")
        return sum(losses.values())

    def _check_finite_params(self, group: str) -> None:
        for p in self._params(group):
            if not torch.isfinite(p).all():
                raise NonFiniteError(f"non-finite {group} parameters")

    def estimates_at(self, iteration: int) -> bool:
        """Whether the regret is estimated (and the multipliers move) after ``iteration``."""
        e = self.cfg.ermas
        if not self.variant.estimates_regret or iteration < e.warmup_iters:
            return False
        return (iteration - e.warmup_iters) % e.regret_interval == 0

    def _adversarial_search(self, iteration: int, seed: int) -> dict[str, Any]:
        if not self.estimates_at(iteration):
            return {}
        return self.apply_estimate(self.estimate_regret(seed))

    def apply_estimate(self, result: TensorDictBase) -> dict[str, Any]:
        """Moves the multipliers (and the meta-gradient term) on a regret estimate ``result``
        (:meth:`estimate_regret`'s) and returns the row entries it logs."""
        e = self.cfg.ermas
        if self.lagrange.frozen:
            self.lagrange.unfreeze()
        regret = result["regret"]
        self.lagrange.update(regret, e.epsilon, reference=result["current_return"])
        if self.meta is not None:
            self.meta.update(result["meta_gradient"], self.lagrange.value)
        return {
            "regret": regret.tolist(),
            "kl": result["kl"].tolist(),
            "lambda": self.lagrange.value.tolist(),
        }

    def estimate_regret(self, seed: int) -> TensorDictBase:
        """One regret estimate of the current agents (``ermas`` runs), as in training.

        The deviation worlds continue the training environments' per-environment state
        (e.g. the economy's curricula: estimator environment ``j`` takes that of training
        environment ``j % num_envs``). Returns the estimator's result
        (:meth:`~torchrl_ermas.regret.ReptileRegretEstimator.estimate`); a non-finite
        rollout, regret or KL raises :class:`NonFiniteError`.
        """
        if not self.variant.estimates_regret:
            raise ValueError(f"variant {self.cfg.variant!r} estimates no regret; use variant='ermas'.")
        continue_env_state(self.env, self.estimator.env)
        try:
            result = self.estimator.estimate(seed=seed)
        except FloatingPointError as err:
            raise NonFiniteError(str(err)) from err
        check_finite_estimate(result)
        return result

    # ------------------------------------------------------------------ state
    def state(self, next_iteration: int) -> dict[str, Any]:
        """Everything a resumed run needs (loads with ``weights_only=True``).

        ``modules`` holds one entry per component, under the same name whatever the
        configuration: ``agent_policy``, ``agent_critic``, ``lagrange`` (variants with
        multipliers), ``meta_gradient`` (``ermas.meta_scale > 0``), ``planner_policy`` (an
        acting planner) and ``planner_critic`` (when the planner advantage or the planner's
        training needs it), e.g.
        ``modules["lagrange.multiplier"]``. ``env`` is the environment's own state (its
        buffers, e.g. the economy's completed-episode counts of its curricula).
        """
        return {
            "iteration": next_iteration,
            "modules": self.modules.state_dict(),
            "env": self.env.base_env.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "history": self.history,
            "config": self._config_json,
        }

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        _check_layout(state, path)
        # the schema's defaults stand in for settings added after the checkpoint was
        # written; the environment's keyword arguments are free-form and have none
        defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig()), resolve=True)
        defaults.pop("env")
        check_resumable(json.loads(state["config"]), self._config_dict(), path, defaults)
        check_state_fits(self.modules.state_dict(), state["modules"], path)
        check_state_fits(self.env.base_env.state_dict(), state.get("env", {}), path)
        self.modules.load_state_dict(state["modules"])
        self.env.base_env.load_state_dict(state.get("env", {}))
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.history = state["history"]
        self.start_iteration = state["iteration"]

    def load_planner(self, path: str | Path) -> None:
        """Loads the planner policy of a checkpoint written by another run."""
        if self.planner_policy is None:
            raise ValueError(f"planner_checkpoint {str(path)!r} and this environment must both have an acting planner.")
        self._load_components(path, "planner_checkpoint", {"planner_policy": self.planner_policy})

    def load_agents(self, path: str | Path) -> None:
        """Loads the agents' policy and critic of a checkpoint written by another run."""
        self._load_components(
            path, "agents_checkpoint", {"agent_policy": self.agent_policy, "agent_critic": self.agent_critic}
        )

    def _load_components(self, path: str | Path, setting: str, components: dict[str, nn.Module]) -> None:
        """Loads ``components`` (name -> module) from another run's checkpoint at ``path``."""
        try:
            state = load_checkpoint(path, self.device)
        except (CheckpointError, FileNotFoundError) as err:
            raise type(err)(
                f"{setting}: {err} Re-run the training run that wrote it, or point "
                f"{setting} at its {previous_path(path).name}."
            ) from None
        _check_layout(state, Path(path))
        for name, module in components.items():
            stored = component_state(state["modules"], name)
            if not stored and module.state_dict():
                raise ValueError(f"{setting} {str(path)!r} has no {name}, which this run needs.")
            check_state_fits(module.state_dict(), stored, Path(path))
            module.load_state_dict(stored)

    def _config_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.structured(self.cfg), resolve=True)

    # ------------------------------------------------------------------ outputs
    def _log_dir(self) -> Path:
        return self.output_dir / "logs"

    def _experiment_name(self) -> str:
        return self.cfg.logger.exp_name or f"{self.cfg.variant}_seed{self.cfg.seed}"

    def _logger(self):
        backend = self.cfg.logger.backend
        if not backend:
            return None
        extra = {"project": self.cfg.logger.project} if backend == "wandb" else {}
        return get_logger(
            backend,
            logger_name=str(self._log_dir()),
            experiment_name=self._experiment_name(),
            **extra,
        )

    @staticmethod
    def _log(logger, row: dict[str, Any]) -> None:
        step = row["iteration"]
        for name, value in row.items():
            if value is None or name == "iteration":
                continue
            if isinstance(value, list):
                for i, v in enumerate(value):
                    logger.log_scalar(f"{name}_{i}", v, step=step)
            else:
                logger.log_scalar(name, value, step=step)

    def final_metrics(self) -> dict[str, Any]:
        """Means over the last ``history_window`` iterations (regret: last estimates)."""
        window = self.cfg.history_window
        planner = self.history["planner_reward"][-window:]
        agents = torch.tensor(self.history["agent_reward"][-window:]).mean(0)
        regrets = [r for r in self.history["regret"] if r is not None][-window:]
        lambdas = [v for v in self.history["lambda"] if v is not None]
        return {
            "planner_reward": sum(planner) / len(planner),
            **{key: sum(self.history[key][-window:]) / len(planner) for key in self.cfg.episode_metrics},
            "agent_reward": agents.tolist(),
            "combined_agent_reward": agents.sum().item(),
            "regret": torch.tensor(regrets).mean(0).tolist() if regrets else None,
            "lambda": lambdas[-1] if lambdas else None,
        }

    def write_results(self) -> dict[str, Any]:
        """Writes ``results.json`` (config, seed, final metrics, history) and returns it."""
        results = {
            "config": self._config_dict(),
            "seed": self.cfg.seed,
            "variant": self.cfg.variant,
            "final": {**self.final_metrics(), **self.extra_final},
            "history": self.history,
        }
        bad = non_finite_entry(results)
        if bad is not None:
            raise ValueError(
                f"results.json holds strict JSON, but {bad} is not finite; a hook's entry of "
                "extra_final must be a finite number (or None)."
            )
        text = json.dumps(results, indent=1, allow_nan=False)
        atomic_write(self.folder.results, lambda handle: handle.write(text.encode()))
        return results
