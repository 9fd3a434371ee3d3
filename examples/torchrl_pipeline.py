"""ERMAS in a plain TorchRL multi-agent PPO script, without ``ErmasTrainer``.

The file to copy into a custom pipeline. It follows the order of TorchRL's own multi-agent
scripts: configuration, environment, modules, collector, replay buffer, loss, training
loop. What ERMAS adds to a MAPPO script is four objects:

- a planner: here a regulator computed from the agents' state by a transform
  (:class:`~torchrl_ermas.transforms.PlannerFromAgents`, a passive planner that wants low
  speeds), so the environment has a second reward, ``("planner", "reward")``;
- :class:`~torchrl_ermas.objectives.PlannerAdvantage`, the planner's critic and advantage,
  owned by the agents' loss;
- :class:`~torchrl_ermas.objectives.ErmasLoss` with a
  :class:`~torchrl_ermas.objectives.LagrangeMultiplier` in place of ``MAPPOLoss``;
- :class:`~torchrl_ermas.regret.ReptileRegretEstimator`, every few iterations, whose
  regret estimate updates the multipliers against ``epsilon``.

The agents of the VMAS scenario keep VMAS's continuous actions (a TanhNormal policy). VMAS
reports its time limit as ``terminated``;
:class:`~torchrl_ermas.transforms.TimeLimitAsTruncated` makes it ``truncated`` so that GAE
bootstraps at time-outs.

    python examples/torchrl_pipeline.py                       # small default, about 2 minutes on a CPU
    python examples/torchrl_pipeline.py ermas.epsilon=0.3 collector.n_iters=60 device=cuda
"""

from __future__ import annotations

import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.modules import MultiAgentMLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import ValueEstimators
from torchrl.record.loggers import generate_exp_name, get_logger

from torchrl_ermas.objectives import ErmasLoss, LagrangeMultiplier, PlannerAdvantage
from torchrl_ermas.regret import ReptileRegretEstimator
from torchrl_ermas.transforms import PlannerFromAgents, TimeLimitAsTruncated
from torchrl_ermas.validation import check_int, check_seed


def make_env(cfg: DictConfig, num_envs: int, device: torch.device) -> TransformedEnv:
    """The VMAS scenario with ``num_envs`` worlds, its time limit as ``truncated`` and the
    regulator planner."""
    base = VmasEnv(
        scenario=cfg.env.scenario,
        num_envs=num_envs,
        n_agents=cfg.env.n_agents,
        max_steps=cfg.env.max_steps,
        continuous_actions=True,
        shared_rew=False,
        device=device,
        seed=cfg.seed,
    )
    regulator = PlannerFromAgents(cfg.regulator.rule, features=tuple(cfg.regulator.features), scale=cfg.regulator.scale)
    return TransformedEnv(base, Compose(TimeLimitAsTruncated(base.max_steps), regulator))


def make_mlp(cfg: DictConfig, n_in: int, n_out: int, n_members: int, device: torch.device) -> MultiAgentMLP:
    return MultiAgentMLP(
        n_in,
        n_out,
        n_agents=n_members,
        centralized=False,
        share_params=cfg.model.shared_parameters,
        depth=cfg.model.depth,
        num_cells=cfg.model.hidden,
        activation_class=torch.nn.Tanh,
        device=device,
    )


def validate(cfg: DictConfig) -> None:
    """Raises a ``ValueError`` naming the first invalid setting of the loop itself (the
    library's pieces check their own arguments when they are built)."""
    check_seed("seed", cfg.seed)
    for name, low in (
        ("env.num_envs", 1),
        ("env.max_steps", 1),
        ("collector.n_iters", 1),
        ("train.num_epochs", 1),
        ("train.minibatch_size", 1),
        ("ermas.warmup_iters", 0),
        ("ermas.regret_interval", 1),
    ):
        check_int(name, OmegaConf.select(cfg, name), low)


@hydra.main(version_base="1.3", config_path="configs", config_name="torchrl_pipeline")
def train(cfg: DictConfig) -> None:
    validate(cfg)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    frames_per_batch = cfg.env.num_envs * cfg.env.max_steps

    # Environment
    env = make_env(cfg, cfg.env.num_envs, device)
    n_agents = env.n_agents
    obs_dim = env.full_observation_spec["agents", "observation"].shape[-1]
    action_spec = env.full_action_spec["agents", "action"]
    planner_obs_dim = env.full_observation_spec["planner", "observation"].shape[-1]

    # Policy (continuous: TanhNormal within the action bounds) and the agents' critic
    actor_net = torch.nn.Sequential(
        make_mlp(cfg, obs_dim, 2 * action_spec.shape[-1], n_agents, device), NormalParamExtractor()
    )
    policy = ProbabilisticActor(
        TensorDictModule(actor_net, [("agents", "observation")], [("agents", "loc"), ("agents", "scale")]),
        in_keys=[("agents", "loc"), ("agents", "scale")],
        out_keys=[("agents", "action")],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        return_log_prob=True,
    )
    critic = TensorDictModule(
        make_mlp(cfg, obs_dim, 1, n_agents, device), [("agents", "observation")], [("agents", "state_value")]
    )

    # The planner side: its critic, advantage and critic loss, one component
    planner_critic = TensorDictModule(
        make_mlp(cfg, planner_obs_dim, 1, 1, device), [("planner", "observation")], [("planner", "state_value")]
    )
    planner_advantage = PlannerAdvantage(
        planner_critic, gamma=cfg.loss.gamma, lmbda=cfg.loss.lmbda, critic_coeff=cfg.loss.critic_coeff
    )

    # Collector
    collector = Collector(
        env,
        policy,
        device=device,
        frames_per_batch=frames_per_batch,
        total_frames=frames_per_batch * cfg.collector.n_iters,
    )

    # Replay buffer: one iteration's transitions, sampled without replacement
    replay_buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(frames_per_batch, device=device),
        sampler=SamplerWithoutReplacement(),
        batch_size=cfg.train.minibatch_size,
    )

    # Loss: ErmasLoss in place of MAPPOLoss, with the multipliers and the planner side
    # frozen during the warm-up; its step anneals over the run's regret estimates
    estimates = len(range(cfg.ermas.warmup_iters, cfg.collector.n_iters, cfg.ermas.regret_interval))
    lagrange = LagrangeMultiplier(n_agents, frozen=True, total_updates=estimates or None).to(device)
    loss_module = ErmasLoss(
        policy,
        critic,
        lagrange,
        planner_advantage=planner_advantage,
        clip_epsilon=cfg.loss.clip_epsilon,
        entropy_coeff=cfg.loss.entropy_coeff,
        critic_coeff=cfg.loss.critic_coeff,
    )
    loss_module.make_value_estimator(ValueEstimators.MAGAE, gamma=cfg.loss.gamma, lmbda=cfg.loss.lmbda)
    lagrange_params = {id(p) for p in lagrange.parameters()}  # lambda has its own update rule, not the optimizer's
    params = [p for p in loss_module.parameters() if p.requires_grad and id(p) not in lagrange_params]
    optim = torch.optim.Adam(params, cfg.train.lr)

    # Regret estimator: one deviation world of regret_envs environments per agent
    estimator = ReptileRegretEstimator(
        policy,
        make_env(cfg, n_agents * cfg.ermas.regret_envs, device),
        value_network=critic,
        gamma=cfg.loss.gamma,
        trust_region=cfg.ermas.trust_region,
        deviation_steps=cfg.ermas.deviation_steps,
        seed=cfg.seed,
    )

    # Logger
    logger = None
    if cfg.logger.backend:
        logger = get_logger(
            cfg.logger.backend,
            logger_name="logs",
            experiment_name=generate_exp_name("ERMAS", f"{cfg.env.scenario}_eps{cfg.ermas.epsilon:g}"),
        )

    for iteration, data in enumerate(collector):
        start = time.perf_counter()
        with torch.no_grad():
            loss_module.planner_advantage(data)  # ("planner", "advantage"), ("planner", "value_target")
            loss_module.value_estimator(data, params=loss_module.critic_network_params)
        replay_buffer.extend(data.reshape(-1))
        for _ in range(cfg.train.num_epochs):
            for minibatch in replay_buffer:
                losses = loss_module(minibatch)
                total = sum(value for key, value in losses.items() if key.startswith("loss_"))
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
                optim.step()
                optim.zero_grad()
        collector.update_policy_weights_()

        row = {
            "planner_reward": data["next", "planner", "reward"].sum(1).mean().item(),
            "agent_reward": data["next", "agents", "reward"].sum(1).mean().item(),
        }
        after_warmup = iteration - cfg.ermas.warmup_iters
        if after_warmup >= 0 and after_warmup % cfg.ermas.regret_interval == 0:
            lagrange.unfreeze()
            regret = estimator.estimate()
            lagrange.update(regret["regret"], cfg.ermas.epsilon, reference=regret["current_return"])
            row.update({f"regret_{i}": r for i, r in enumerate(regret["regret"].tolist())})
        row.update({f"lambda_{i}": v for i, v in enumerate(lagrange.value.tolist())})
        row["time_train"] = time.perf_counter() - start
        print(f"iteration {iteration:3d}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
        if logger is not None:
            for key, value in row.items():
                logger.log_scalar(key, value, step=iteration)
    collector.shutdown()


if __name__ == "__main__":
    train()
