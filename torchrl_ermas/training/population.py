"""Many training runs as one batched computation: runs as a batch dimension.

A population is ``R`` runs that share the environment, the network shapes and the PPO
settings and differ only in the per-run values of :data:`PER_RUN_KEYS`. They collect their
episodes in one environment batch of ``R x num_envs`` environments and compute their
policies, critics, advantages and losses under :func:`torch.vmap` over the run dim, while
every run keeps its own parameters, optimizer, gradient clipping, logs, checkpoints and
``results.json``, in the layout of a run trained alone by
:class:`~torchrl_ermas.training.ErmasTrainer`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import distributions as D
from torch import nn
from torchrl.envs import EnvBase
from torchrl.modules.distributions import has_analytic_entropy
from torchrl.objectives import LossModule
from torchrl.objectives.multiagent import MAPPOLoss
from torchrl.objectives.value import MultiAgentGAE
from tqdm.auto import tqdm

from torchrl_ermas.objectives import ErmasLoss, PlannerAdvantage
from torchrl_ermas.regret import ReptileRegretEstimator, persistent_env_state, seed_env

from ..validation import check_int
from .checkpoint import save_checkpoint
from .config import TrainConfig, as_config
from .run_folder import check_own_folders, flatten
from .trainer import (
    ErmasTrainer,
    NonFiniteError,
    _group_keys,
    check_finite_estimate,
    continue_env_state,
    episode_collector,
    minibatch_buffers,
    planner_advantage,
    ppo_loss_settings,
    risk_robust_reward,
)

#: the settings in which the runs of one population may differ
PER_RUN_KEYS = (
    "seed",
    "output_dir",
    "logger.exp_name",
    "variant",
    "ermas.epsilon",
    "ermas.lambda_init",
    "reward.q",
    "reward.dr_scale",
    "reward.rr_eta",
    "agents.lr",
    "planner.lr",
    "planner_checkpoint",
    "agents_checkpoint",
)
#: the variants a population trains
POPULATION_VARIANTS = ("marl", "fixed_lambda", "ermas")


def _shared_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that every run of a population shares (all but :data:`PER_RUN_KEYS`)."""
    flat = flatten(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    return {key: value for key, value in flat.items() if key not in PER_RUN_KEYS}


def check_population(cfgs: Sequence[TrainConfig]) -> None:
    """Refuses runs that cannot train as one population, naming the setting.

    The runs must agree on every setting but those of :data:`PER_RUN_KEYS`, and none may
    be a run that trains alone (:func:`alone_reason`).

    Examples:
        >>> check_population([TrainConfig(variant="marl"), TrainConfig(variant="marl", num_envs=8)])
        Traceback (most recent call last):
        ...
        ValueError: the runs of a population may differ only in seed, ..., but num_envs is 64 in run 0 and 8 in run 1.
    """
    if not cfgs:
        raise ValueError("a population needs at least one run configuration, got none.")
    for index, cfg in enumerate(cfgs):
        reason = alone_reason(cfg)
        if reason is not None:
            raise ValueError(f"run {index} trains alone (ErmasTrainer): {reason}.")
    flat = [_shared_settings(cfg) for cfg in cfgs]
    for index, other in enumerate(flat[1:], start=1):
        for key in sorted(flat[0].keys() | other.keys()):
            first, value = flat[0].get(key), other.get(key)
            if first != value:
                raise ValueError(
                    f"the runs of a population may differ only in {', '.join(PER_RUN_KEYS)}, but "
                    f"{key} is {first!r} in run 0 and {value!r} in run {index}."
                )
    check_own_folders([cfg.output_dir for cfg in cfgs])


def alone_reason(cfg: TrainConfig) -> str | None:
    """Why a run cannot join a population, or ``None`` if it can.

    A run trains alone if its variant is not among :data:`POPULATION_VARIANTS`, if it has
    the meta-gradient term (``ermas.meta_scale > 0``, whose per-run state is not batched),
    if it has a ``fixed_planner`` (a hand-written policy, e.g. the Saez planner, with
    no parameters to stack over runs and possibly state and data-dependent steps), or if it
    logs to wandb (one active wandb run per process: the runs' logs would mix).

    Examples:
        >>> alone_reason(TrainConfig(variant="marl")) is None
        True
        >>> alone_reason(TrainConfig(variant="marl", train_planner=False,
        ...                          fixed_planner={"_target_": "torchrl_ermas.envs.economy.SaezPlanner"}))
        "fixed_planner is {'_target_': 'torchrl_ermas.envs.economy.SaezPlanner'}, not a network"
    """
    if cfg.variant not in POPULATION_VARIANTS:
        return f"variant is {cfg.variant!r}, but a population trains the variants {list(POPULATION_VARIANTS)}"
    if cfg.variant == "ermas" and cfg.ermas.meta_scale > 0:
        return f"ermas.meta_scale={cfg.ermas.meta_scale} (the meta-gradient term)"
    if cfg.fixed_planner is not None:
        return f"fixed_planner is {cfg.fixed_planner!r}, not a network"
    if cfg.logger.backend == "wandb":
        return "logger.backend is 'wandb', which keeps one active run per process"
    return None


def populations(cfgs: Sequence[TrainConfig], *, size: int, workers: int = 1) -> list[list[int]]:
    """Splits runs into populations: the indices of ``cfgs`` that train together.

    Runs that can batch (:func:`check_population`) are grouped by their shared settings;
    each group is cut into chunks of at most ``size`` runs, and into at least ``workers``
    chunks when it has as many runs, so that the chunks keep ``workers`` processes busy.
    The runs are dealt to the chunks in turn, variant by variant, so that every chunk holds
    its share of each variant (an ``ermas`` run, with its regret estimates, costs several
    times a ``marl`` one). Every other run is a population of its own. Larger populations
    come first.

    Examples:
        >>> from torchrl_ermas.training import ErmasConfig
        >>> meta = TrainConfig(variant="ermas", ermas=ErmasConfig(meta_scale=0.2))  # trains alone
        >>> cfgs = [TrainConfig(variant="marl", seed=s) for s in range(5)] + [meta]
        >>> populations(cfgs, size=2)
        [[0, 3], [1, 4], [2], [5]]
        >>> cfgs = [TrainConfig(variant=v, seed=s) for v in ("ermas", "marl") for s in range(3)]
        >>> populations(cfgs, size=32, workers=2)
        [[0, 2, 4], [1, 3, 5]]
    """
    check_int("size", size, 1)
    check_int("workers", workers, 1)
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for index, cfg in enumerate(cfgs):
        if alone_reason(cfg) is None:
            groups.setdefault(json.dumps(_shared_settings(cfg), sort_keys=True), []).append(index)
        else:
            alone.append([index])
    chunks = []
    for indices in groups.values():
        count = max(math.ceil(len(indices) / size), min(workers, len(indices)))
        dealt: list[list[int]] = [[] for _ in range(count)]
        for turn, index in enumerate(sorted(indices, key=lambda i: (cfgs[i].variant, i))):
            dealt[turn % count].append(index)
        chunks.extend(sorted(chunk) for chunk in dealt)
    return sorted(chunks + alone, key=len, reverse=True)


class ResumeMismatchError(ValueError):
    """The runs of a population to resume have checkpoints at different iterations (e.g. a
    kill between the runs' checkpoint writes); each can resume alone."""


class _VmapEntropy:
    """The analytic entropy without the stock losses' data-dependent finiteness check,
    which :func:`torch.vmap` cannot trace (an infinite entropy is not replaced); a
    distribution without one (TanhNormal) keeps the stock sampled entropy, which
    :class:`~torchrl_ermas.training.models.VmappableTanhNormal` draws under vmap."""

    def _get_entropy(self, dist: D.Distribution, adv_shape: torch.Size) -> torch.Tensor:
        if has_analytic_entropy(dist):
            return dist.entropy().unsqueeze(-1)
        return super()._get_entropy(dist, adv_shape)


class _RunPPOLoss(_VmapEntropy, MAPPOLoss):
    """:class:`~torchrl.objectives.multiagent.MAPPOLoss` of one run, traceable by vmap."""


class _RunErmasLoss(_VmapEntropy, ErmasLoss):
    """:class:`~torchrl_ermas.objectives.ErmasLoss` of one run, traceable by vmap."""


def stack_runs(modules: Sequence[nn.Module]) -> TensorDictBase:
    """The parameters and buffers of ``modules`` (one per run, same structure), stacked on a
    leading run dim.

    The stack is differentiable: each run's gradient flows back to its own module, whose
    parameters stay the leaves that its optimizer updates.

    Examples:
        >>> runs = [nn.Linear(3, 2) for _ in range(4)]
        >>> params = stack_runs(runs)
        >>> params["weight"].shape
        torch.Size([4, 2, 3])
        >>> params["weight"].sum().backward()
        >>> runs[2].weight.grad.unique()
        tensor([1.])
    """
    return TensorDict.stack([TensorDict.from_module(module) for module in modules])


def vmap_runs(template: nn.Module, func: Callable[..., Any], params: TensorDictBase, *args: Any) -> Any:
    """``func(*args)`` once per run under :func:`torch.vmap`, ``template`` holding that run's
    ``params`` (leading run dim, e.g. from :func:`stack_runs`); ``args`` have the run dim too.

    Examples:
        >>> runs = [nn.Linear(3, 1) for _ in range(2)]
        >>> template = copy.deepcopy(runs[0])
        >>> x = torch.randn(2, 5, 3)
        >>> out = vmap_runs(template, template, stack_runs(runs), x)
        >>> torch.allclose(out[1], runs[1](x[1]))
        True
    """

    def call(run_params: TensorDictBase, *run_args: Any) -> Any:
        with run_params.to_module(template):
            return func(*run_args)

    if params.shape[0] == 1:  # broadcast, not batched: see the note of PopulationTrainer
        return torch.vmap(call, in_dims=(None, *[0] * len(args)), randomness="different")(params[0], *args)
    return torch.vmap(call, randomness="different")(params, *args)


class PopulationPolicy(TensorDictModuleBase):
    """The policies of ``R`` runs acting in one batch of ``R x E`` environments.

    Environment ``r * E + e`` belongs to run ``r``: the input ``[R * E]`` is viewed as
    ``[R, E]`` and each run's policy acts on its own environments (vmapped over the runs,
    with independent random draws).

    Args:
        policies (sequence of TensorDictModuleBase): one policy per run, all of the same
            structure; they keep their own parameters.

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> policies = [TensorDictModule(nn.Linear(3, 2), ["obs"], ["action"]) for _ in range(2)]
        >>> policy = PopulationPolicy(policies)
        >>> data = policy(TensorDict({"obs": torch.randn(6, 3)}, [6]))  # 2 runs x 3 envs
        >>> torch.allclose(data["action"][3:], policies[1].module(data["obs"][3:]))
        True
    """

    def __init__(self, policies: Sequence[TensorDictModuleBase]) -> None:
        super().__init__()
        self.policies = nn.ModuleList(policies)
        self.template = copy.deepcopy(policies[0]).requires_grad_(False)
        self.in_keys = list(self.template.in_keys)
        self.out_keys = list(self.template.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        runs = len(self.policies)
        inputs = tensordict.select(*self.in_keys).reshape(runs, -1)
        out = vmap_runs(self.template, self.template, stack_runs(self.policies), inputs)
        tensordict.update(out.select(*self.out_keys).reshape(tensordict.batch_size))
        return tensordict


def _critic_values(
    critic: TensorDictModuleBase,
    value_key: tuple[str, str],
    params: TensorDictBase,
    data: TensorDictBase,
    *,
    stacked: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each run's critic values at the root and ``"next"`` of ``data`` ``[R, E, T]``.

    The values are computed as :class:`~torchrl.objectives.value.MultiAgentGAE` computes
    them for a run alone (one vmapped call over the root and ``"next"`` inputs), so that
    a population of one reproduces a run alone exactly: with the parameters stacked for
    the two inputs (``stacked``, the agents' loss passes its parameters to its estimator)
    or not (the planner's :class:`~torchrl_ermas.objectives.PlannerAdvantage`).
    """

    def values(run_data: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.stack([run_data.select(*critic.in_keys), run_data.get("next").select(*critic.in_keys)])
        if stacked:
            run_params = TensorDict.from_module(critic)
            out = vmap_runs(critic, critic, torch.stack([run_params, run_params]), inputs)
        else:
            out = torch.vmap(critic, (0,), randomness="error")(inputs)
        value = out.get(value_key)
        return value[0], value[1]

    with torch.no_grad():
        return vmap_runs(critic, values, params.detach(), data)


def _gae(value_key: tuple[str, str], group: str, gamma: float, lmbda: float) -> MultiAgentGAE:
    """The multi-agent GAE of ``group``, reading the values from the data."""
    gae = MultiAgentGAE(gamma=gamma, lmbda=lmbda, value_network=None)
    gae.set_keys(
        advantage=(group, "advantage"),
        value_target=(group, "value_target"),
        value=value_key,
        reward=(group, "reward"),
    )
    return gae


class _RunGroup:
    """Runs of a population whose modules have one structure (one variant): they share
    vmapped losses, advantages and minibatches.

    ``template`` is a copy of the first run's modules that holds each run's parameters in
    turn under vmap; the losses are built on it as :class:`ErmasTrainer` builds them.
    """

    def __init__(self, runs: Sequence[ErmasTrainer], indices: list[int]) -> None:
        self.runs = list(runs)
        self.indices = indices
        lead = self.runs[0]
        self.cfg = cfg = lead.cfg
        self.template = copy.deepcopy(lead.modules).requires_grad_(False)
        self.rr = risk_robust_reward([run.cfg.reward.rr_eta for run in self.runs], lead.device)
        modules = self.template
        self.losses: dict[str, LossModule | PlannerAdvantage] = {}
        make = _RunErmasLoss if lead.variant.uses_planner_advantage else _RunPPOLoss
        extra = {"lagrange": modules["lagrange"]} if "lagrange" in modules else {}
        self.losses["agents"] = self._loss(make, modules["agent_policy"], modules["agent_critic"], "agents", extra)
        self.planner_advantage = None
        if lead.planner_advantage is not None:
            self.planner_advantage = planner_advantage(modules["planner_critic"], cfg.planner)
            self.planner_gae = _gae(self.planner_advantage.value_key, "planner", cfg.planner.gamma, cfg.planner.lmbda)
        if "planner" in lead.optimizers:
            self.losses["planner"] = (
                self._loss(_RunPPOLoss, modules["planner_policy"], modules["planner_critic"], "planner", {})
                if lead.planner_loss is not None
                else self.planner_advantage
            )
        self.agent_gae = _gae(("agents", "state_value"), "agents", cfg.agents.gamma, cfg.agents.lmbda)
        self.buffers = minibatch_buffers(cfg, self.losses, cfg.num_envs * lead.horizon, lead.device)

    def _loss(self, make, actor, critic, group: str, extra: dict[str, nn.Module]) -> LossModule:
        ppo = getattr(self.cfg, group)
        loss = make(
            actor,
            critic,
            **extra,
            **ppo_loss_settings(ppo),
            functional=False,  # the networks run with the parameters vmap puts in the template
            reduction="none",  # reduced per run below (vmap cannot squeeze a reduced loss)
        )
        loss.set_keys(**_group_keys(group))
        return loss

    def advantages(self, data: TensorDictBase) -> None:
        """Writes each run's planner and agent advantages into ``data`` ``[G, E, T]``."""
        params = stack_runs([run.modules for run in self.runs])
        if self.planner_advantage is not None:
            if self.rr is not None:
                self.rr(data)
            self._values(data, params["planner_critic"], self.planner_advantage.value_key, stacked=False)
            self.planner_gae(data)
        self._values(data, params["agent_critic"], ("agents", "state_value"), stacked=True)
        self.agent_gae(data)

    def _values(self, data: TensorDictBase, params: TensorDictBase, key: tuple[str, str], *, stacked: bool) -> None:
        critic = self.template["agent_critic" if key[0] == "agents" else "planner_critic"]
        value, next_value = _critic_values(critic, key, params, data, stacked=stacked)
        data.set(key, value)
        data.set(("next", key), next_value)

    def update(self, data: TensorDictBase) -> None:
        """PPO epochs on each run's transitions (agents, then planner), minibatches of the
        same indices for every run, each run stepping its own optimizer on its own clipped
        gradient."""
        flat = data.reshape(len(self.runs), -1).transpose(0, 1)  # [transitions, runs]
        for buffer in self.buffers.values():  # clears the shared storage and each sampler
            buffer.empty()
        self.buffers["agents"].extend(flat)
        for group, buffer in self.buffers.items():
            ppo = getattr(self.cfg, group)
            for _ in range(ppo.epochs):
                for batch in buffer:  # one pass without replacement
                    self._step(group, batch.transpose(0, 1).contiguous(), ppo.max_grad_norm)
            for run in self.runs:
                run._check_finite_params(group)

    def _step(self, group: str, batch: TensorDictBase, max_grad_norm: float) -> None:
        total, losses = vmap_runs(
            self.template, _run_loss(self.losses[group]), stack_runs([run.modules for run in self.runs]), batch
        )
        for name, value in losses.items():
            bad = (~torch.isfinite(value)).nonzero().flatten().tolist()
            if bad:
                run = self.runs[bad[0]]
                raise NonFiniteError(
                    f"non-finite {group} {name} ({value[bad[0]].item()}) of the run in {run.cfg.output_dir}"
                )
        optimizers = [run.optimizers[group] for run in self.runs]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        total.sum().backward()  # a sum: each run's gradient is that of its own loss
        for run, optimizer in zip(self.runs, optimizers):
            torch.nn.utils.clip_grad_norm_(run._params(group), max_grad_norm)
            optimizer.step()


def _run_loss(loss: LossModule | PlannerAdvantage) -> Callable[[TensorDictBase], tuple[torch.Tensor, dict]]:
    """One run's total loss and its terms (means over the minibatch), as
    :class:`ErmasTrainer` sums them; ``loss`` returns unreduced terms."""

    def run_loss(batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(loss, PlannerAdvantage):  # the planner critic alone
            out = loss.loss(batch, "none")
        else:
            out = loss(batch)
        losses = {key: value.mean() for key, value in out.items() if key.startswith("loss_")}
        return sum(losses.values()), losses

    return run_loss


class PopulationTrainer:
    """Trains ``R`` runs as one batched computation (runs as a batch dimension).

    The runs share the environment class, the network shapes and the PPO settings; they
    may differ in :data:`PER_RUN_KEYS` only (e.g. seeds, ``reward.q``, learning rates,
    epsilon, the variant among :data:`POPULATION_VARIANTS`, a frozen planner per run), and
    any other difference raises a ``ValueError`` naming the setting. Each run is an
    :class:`~torchrl_ermas.training.ErmasTrainer` that owns its networks (built from its
    own seed, exactly as when it trains alone), optimizers, folder, history, logs,
    checkpoints and ``results.json``, so every run's outputs have the layout of a run
    trained alone, and its checkpoint resumes in a single-run trainer and vice versa. The
    population only batches the computation:

    1. one :class:`~torchrl.collectors.Collector` steps ``R x num_envs`` environments
       (environment ``r * num_envs + e`` is run ``r``'s, its ``reward.q`` applied per
       environment) with a :class:`PopulationPolicy`;
    2. critics, advantages (multi-agent GAE on ``[R, num_envs, T]``) and the PPO losses
       are vmapped over the runs; runs of one variant share one vmapped loss;
    3. each run's loss is backpropagated to its own parameters (the runs' losses are
       summed), its gradient clipped to its own norm and its own Adam stepped;
    4. the ``ermas`` runs estimate their regrets in one batch
       (:meth:`~torchrl_ermas.regret.ReptileRegretEstimator.estimate` with every run's
       policy: ``n_agents`` deviation worlds per run, with the run's own planner, critic,
       ``reward.q`` and environment state), and each run moves its own multipliers.

    The random stream (iteration seeds, environment seeds, minibatch permutations, one per
    epoch and shared by the runs) follows the first run's seed, and the batched regret
    estimate's the first ``ermas`` run's. A population of one
    therefore replays :class:`ErmasTrainer` bit for bit; in a larger population a run's
    values never depend on another run's, but its random draws differ from its solo run's
    (the runs are equivalent to solo runs in distribution).

    A killed population resumes (``resume=True`` in every run) from its runs' checkpoints,
    which must all be at the same iteration.

    .. note::
        A population of one broadcasts its parameters under vmap instead of batching
        them on a run dim of size one. With batched weights a linear layer becomes a
        batched matrix product (``bmm``), and PyTorch's CPU ``bmm`` computes products of
        fewer than 400 multiply-adds (e.g. a 16-unit layer to 3 actions for 8 rows) with a
        naive loop of its own, which rounds differently from the BLAS matrix product of a
        run alone; larger products go through the same ``mm`` per run and agree. The
        broadcast runs the same vmapped code with the kernels of a run alone.

    Args:
        cfgs (sequence of TrainConfig, DictConfig or dict): one configuration per run.
        env_fn (callable, optional): ``env_fn(batch_size, device) -> EnvBase``, as for
            :class:`ErmasTrainer`.

    Examples:
        >>> import tempfile
        >>> base = dict(iterations=2, num_envs=4, progress=False, logger={"backend": ""},
        ...             env={"_target_": "torchrl_ermas.envs.SequentialBimatrixEnv", "max_steps": 10})
        >>> cfgs = [dict(base, variant=variant, seed=seed, output_dir=tempfile.mkdtemp())
        ...         for variant, seed in (("marl", 0), ("fixed_lambda", 1))]
        >>> population = PopulationTrainer(cfgs)
        >>> [sorted(results["final"]) for results in population.train()][1]
        ['agent_reward', 'combined_agent_reward', 'lambda', 'planner_reward', 'regret']
    """

    def __init__(
        self,
        cfgs: Sequence[TrainConfig | DictConfig | dict],
        env_fn: Callable[[int, torch.device], EnvBase] | None = None,
    ) -> None:
        cfgs = [as_config(cfg) for cfg in cfgs]
        check_population(cfgs)
        self.runs = [ErmasTrainer(cfg, env_fn) for cfg in cfgs]
        starts = [run.start_iteration for run in self.runs]
        if len(set(starts)) > 1:
            found = ", ".join(f"{run.cfg.output_dir}: {start}" for run, start in zip(self.runs, starts))
            raise ResumeMismatchError(
                f"the runs of a population resume together, but their checkpoints are at different "
                f"iterations ({found}); resume them alone (ErmasTrainer) or set overwrite=true."
            )
        self.start_iteration = starts[0]
        lead = self.runs[0]
        self.cfg = lead.cfg
        self.device = lead.device
        self.horizon = lead.horizon
        self.groups = self._groups()
        torch.manual_seed(self.cfg.seed)  # the environment's own draws, as for a run alone
        self.env = lead._make_env(len(self.runs) * self.cfg.num_envs, **self._env_rewards(self.runs))
        self._share_env_state(to_runs=False)
        self.policy = PopulationPolicy([run.collection_policy for run in self.runs])
        frames = len(self.runs) * self.cfg.num_envs * self.horizon
        self.collector = episode_collector(self.env, self.policy, frames, self.device)
        #: the runs that estimate their regret (``ermas``), and their batched estimator
        self.estimating = [index for index, run in enumerate(self.runs) if run.variant.estimates_regret]
        self.estimator = self._batched_estimator() if len(self.estimating) > 1 else None

    def _groups(self) -> list[_RunGroup]:
        by_variant: dict[str, list[int]] = {}
        for index, run in enumerate(self.runs):
            by_variant.setdefault(run.cfg.variant, []).append(index)
        return [_RunGroup([self.runs[i] for i in indices], indices) for indices in by_variant.values()]

    def _share_env_state(self, *, to_runs: bool) -> None:
        """Copies the environments' persistent state (:func:`~torchrl_ermas.regret.persistent_env_state`,
        e.g. the economy's completed-episode counts) to the runs' environments,
        whose checkpoints carry it, or back from them (a resumed population)."""
        runs, envs = len(self.runs), self.cfg.num_envs
        for name, buffer in persistent_env_state(self.env).items():
            per_run = buffer.view(runs, envs, *buffer.shape[1:])
            for run, own in zip(self.runs, per_run):
                stored = persistent_env_state(run.env)[name]
                (stored if to_runs else own).copy_(own if to_runs else stored)

    def _env_rewards(self, runs: Sequence[ErmasTrainer], envs: int | None = None) -> dict[str, torch.Tensor]:
        """``reward.q`` and ``reward.dr_scale`` of each environment ``[R * envs]`` of ``runs``
        (``envs`` per run, by default ``num_envs``), run-major."""
        envs = self.cfg.num_envs if envs is None else envs
        per_run = {name: [getattr(run.cfg.reward, name) for run in runs] for name in ("q", "dr_scale")}
        device = self.device
        return {name: torch.tensor(values, device=device).repeat_interleave(envs) for name, values in per_run.items()}

    def _batched_estimator(self) -> ReptileRegretEstimator:
        """One regret estimator for every run of :attr:`estimating`: run ``r``'s deviation
        worlds (``n_agents * ermas.regret_envs`` environments with its ``reward.q``) are the
        ``r``-th chunk of its environment batch, acting with run ``r``'s policy, planner and
        critic."""
        runs = [self.runs[index] for index in self.estimating]
        lead = runs[0]
        envs = lead.n_agents * self.cfg.ermas.regret_envs
        env = lead._make_env(len(runs) * envs, **self._env_rewards(runs, envs))
        planner = None if lead.planner_policy is None else PopulationPolicy([run.planner_policy for run in runs])
        critic = PopulationPolicy([run.agent_critic for run in runs])
        # PPO deviations train at their own run's agents.lr: one rate per world, run by run
        lrs = torch.tensor([run.cfg.agents.lr for run in runs], dtype=torch.float64, device=lead.device)
        ppo = self.cfg.ermas.deviation_optimizer == "ppo"
        deviation_lr = lrs.repeat_interleave(lead.n_agents) if ppo and (lrs != lrs[0]).any() else None
        return lead.make_estimator(
            copy.deepcopy(lead.agent_policy), env, planner_policy=planner, critic=critic, deviation_lr=deviation_lr
        )

    def train(self) -> list[dict[str, Any]]:
        """Runs the remaining iterations and returns each run's ``results.json`` content."""
        cfg = self.cfg
        loggers = [run._logger() for run in self.runs]
        bar = tqdm(
            range(self.start_iteration, cfg.iterations),
            initial=self.start_iteration,
            total=cfg.iterations,
            disable=not cfg.progress,
            desc=f"population of {len(self.runs)}",
        )
        for iteration in bar:
            # the runs' environments hold the population environment's state (shared at the
            # start and in every iteration), so their good states carry it
            good_states = [run._good_state(iteration) for run in self.runs]
            try:
                rows = self._iteration(iteration)
            except NonFiniteError as err:
                for run, good_state in zip(self.runs, good_states):
                    save_checkpoint(good_state, run.folder.checkpoint, keep_previous=True)
                raise NonFiniteError(
                    f"{err} at iteration {iteration}; every run's last good state (before "
                    f"iteration {iteration}) is saved in its output_dir's checkpoint.pt."
                ) from None
            for run, row, logger in zip(self.runs, rows, loggers):
                run._record(row, logger)
                run._checkpoint_after(iteration)
        return [run.write_results() for run in self.runs]

    def _iteration(self, iteration: int) -> list[dict[str, Any]]:
        for run in self.runs:
            run._anneal_learning_rates(iteration)
        seed = self.runs[0]._iteration_seed(iteration)
        torch.manual_seed(seed)
        start = time.perf_counter()
        data = self._collect(seed)
        rows = [run._metrics(data[index], iteration) for index, run in enumerate(self.runs)]
        time_collect = time.perf_counter() - start

        start = time.perf_counter()
        for group in self.groups:
            group_data = data[group.indices]
            group.advantages(group_data)
            group.update(group_data)
        time_train = time.perf_counter() - start
        self._share_env_state(to_runs=True)  # each run's estimate starts from its environments' state
        start = time.perf_counter()
        if self.estimator is not None and self.runs[self.estimating[0]].estimates_at(iteration):
            results = self._estimate_regrets(iteration)
            searches = {index: self.runs[index].apply_estimate(result) for index, result in results.items()}
        else:  # at most one run estimates, alone in its own worlds
            searches = {
                index: run._adversarial_search(iteration, run._iteration_seed(iteration))
                for index, run in enumerate(self.runs)
            }
        time_regret = time.perf_counter() - start
        for index, row in enumerate(rows):
            row.update(searches.get(index, {}))
            row.update(time_collect=time_collect, time_train=time_train, time_regret=time_regret)
        return rows

    def _estimate_regrets(self, iteration: int) -> dict[int, TensorDictBase]:
        """The regret estimates of the runs of :attr:`estimating`, in one batch, by run index."""
        runs = [self.runs[index] for index in self.estimating]
        continue_env_state(self.env, self.estimator.env, training_runs=len(self.runs), runs=self.estimating)
        params = stack_runs([run.agent_policy for run in runs]).data
        try:
            result = self.estimator.estimate(seed=runs[0]._iteration_seed(iteration), params=params)
        except FloatingPointError as err:
            folders = [str(run.cfg.output_dir) for run in runs]
            raise NonFiniteError(f"{err} (the batched regret estimate of the runs in {folders})") from err
        for run, run_result in zip(runs, result.unbind(0)):
            check_finite_estimate(run_result, f" of the run in {run.cfg.output_dir}")
        return dict(zip(self.estimating, result.unbind(0)))

    @torch.no_grad()
    def _collect(self, seed: int) -> TensorDictBase:
        """Every run's ``num_envs`` episodes of ``horizon`` steps, ``[R, num_envs, horizon]``."""
        seed_env(self.env, seed)
        data = self.collector.rollout().reshape(len(self.runs), self.cfg.num_envs, self.horizon)
        data.names = [None, None, "time"]
        return data
