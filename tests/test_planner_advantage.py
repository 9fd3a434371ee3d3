"""Tests for :class:`torchrl_ermas.objectives.PlannerAdvantage`, alone and owned by ErmasLoss."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MultiAgentMLP, ProbabilisticActor

from torchrl_ermas.objectives import ErmasLoss, LagrangeMultiplier, PlannerAdvantage

ENVS, STEPS, OBS, N_AGENTS = 3, 7, 2, 2


def _critic(weight: float = 0.0, bias: float = 0.5) -> TensorDictModule:
    """A linear planner critic ``V = weight * sum(obs) + bias`` of shape ``[*B, 1, 1]``."""
    linear = nn.Linear(OBS, 1)
    nn.init.constant_(linear.weight, weight)
    nn.init.constant_(linear.bias, bias)
    return TensorDictModule(linear, [("planner", "observation")], [("planner", "state_value")])


def _trajectories(seed: int = 0) -> TensorDict:
    """``[ENVS, STEPS]`` planner trajectories; env 1 terminates at step 3 and restarts."""
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(ENVS, STEPS, 1, dtype=torch.bool)
    terminated[1, 3] = True
    terminated[:, -1] = True
    observation = torch.randn(ENVS, STEPS, 1, OBS, generator=g)
    return TensorDict(
        {
            "planner": {"observation": observation},
            "next": {
                "planner": {
                    "observation": torch.randn(ENVS, STEPS, 1, OBS, generator=g),
                    "reward": torch.randn(ENVS, STEPS, 1, 1, generator=g),
                },
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        batch_size=[ENVS, STEPS],
    )


def _hand_gae(data: TensorDict, critic: TensorDictModule, gamma: float, lmbda: float) -> torch.Tensor:
    value = critic(data.copy())["planner", "state_value"]
    next_value = critic(data["next"].copy())["planner", "state_value"]
    reward = data["next", "planner", "reward"]
    terminated = data["next", "terminated"].unsqueeze(-1).float()
    done = data["next", "done"].unsqueeze(-1).float()
    delta = reward + gamma * (1 - terminated) * next_value - value
    advantage = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in reversed(range(STEPS)):
        running = delta[:, t] + gamma * lmbda * (1 - done[:, t]) * running
        advantage[:, t] = running
    return advantage


@pytest.mark.parametrize("gamma,lmbda", [(0.9, 0.9), (0.5, 1.0), (1.0, 0.0)])
def test_advantage_is_gae_on_the_planner_critic(gamma, lmbda):
    critic = _critic(weight=0.3, bias=-0.2)
    data = PlannerAdvantage(critic, gamma=gamma, lmbda=lmbda)(_trajectories())
    expected = _hand_gae(data, critic, gamma, lmbda)
    with torch.no_grad():
        torch.testing.assert_close(data["planner", "advantage"], expected)
        value = critic(data.copy())["planner", "state_value"]
    torch.testing.assert_close(data["planner", "value_target"], expected + value)
    assert not data["planner", "advantage"].requires_grad


@pytest.mark.parametrize(
    "loss_critic_type,distance",
    [
        ("l2", lambda d: d.pow(2)),
        ("l1", lambda d: d.abs()),
        ("smooth_l1", lambda d: torch.where(d.abs() < 1, 0.5 * d.pow(2), d.abs() - 0.5)),
    ],
)
def test_critic_loss_is_the_weighted_distance_to_the_value_target(loss_critic_type, distance):
    critic = _critic(weight=0.1, bias=0.0)
    planner = PlannerAdvantage(critic, critic_coeff=0.25, loss_critic_type=loss_critic_type)
    batch = planner(_trajectories()).reshape(-1)
    batch["planner", "value_target"] = 3.0 * torch.randn(batch.shape[0], 1, 1)  # |d| > 1 and < 1
    loss = planner.loss(batch)["loss_planner_critic"]
    with torch.no_grad():
        difference = critic(batch.copy())["planner", "state_value"] - batch["planner", "value_target"]
    torch.testing.assert_close(loss, 0.25 * distance(difference).mean())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_critic_loss_reduction(reduction):
    """``reduction`` reduces the per-sample distances as TorchRL's losses do; ErmasLoss passes
    its own reduction to the planner side."""
    planner = PlannerAdvantage(_critic(weight=0.1, bias=0.0), critic_coeff=0.5)
    batch = planner(_trajectories()).reshape(-1)
    per_sample = planner.loss(batch, "none")["loss_planner_critic"]
    assert per_sample.shape == (batch.shape[0], 1, 1)
    reduced = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    torch.testing.assert_close(planner.loss(batch, reduction)["loss_planner_critic"], reduced)
    owner = _agents_loss(planner, reduction=reduction)
    data = _with_agents(owner.planner_advantage(_trajectories()), owner).reshape(-1)
    torch.testing.assert_close(owner(data)["loss_planner_critic"], planner.loss(data, reduction)["loss_planner_critic"])
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'max'"):
        planner.loss(batch, "max")


def test_critic_loss_needs_the_value_target_first():
    planner = PlannerAdvantage(_critic())
    with pytest.raises(KeyError, match=r"value target .* call the PlannerAdvantage"):
        planner.loss(_trajectories().reshape(-1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gamma": 0.0}, "gamma must be a finite number > 0 and <= 1"),
        ({"gamma": float("nan")}, "gamma"),
        ({"lmbda": 1.5}, "lmbda must be a finite number >= 0 and <= 1"),
        ({"critic_coeff": -1.0}, "critic_coeff must be"),
        ({"loss_critic_type": "l3"}, "loss_critic_type must be one of"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlannerAdvantage(_critic(), **kwargs)


def test_a_critic_writing_another_key_is_refused_with_what_to_set():
    root_critic = TensorDictModule(nn.Linear(OBS, 1), [("planner", "observation")], ["state_value"])
    with pytest.raises(ValueError, match=r"out_keys=\[\('planner', 'state_value'\)\]"):
        PlannerAdvantage(root_critic)


def _agents_loss(planner_advantage: PlannerAdvantage | None, **kwargs) -> ErmasLoss:
    torch.manual_seed(0)
    actor = ProbabilisticActor(
        TensorDictModule(
            MultiAgentMLP(OBS, 3, N_AGENTS, centralized=False, share_params=True, depth=1, num_cells=8),
            [("agents", "observation")],
            [("agents", "logits")],
        ),
        in_keys=[("agents", "logits")],
        out_keys=[("agents", "action")],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = TensorDictModule(
        MultiAgentMLP(OBS, 1, N_AGENTS, centralized=False, share_params=True, depth=1, num_cells=8),
        [("agents", "observation")],
        [("agents", "state_value")],
    )
    return ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), planner_advantage=planner_advantage, **kwargs)


def _with_agents(data: TensorDict, loss: ErmasLoss) -> TensorDict:
    g = torch.Generator().manual_seed(1)
    data["agents", "observation"] = torch.randn(ENVS, STEPS, N_AGENTS, OBS, generator=g)
    data["next", "agents", "observation"] = torch.randn(ENVS, STEPS, N_AGENTS, OBS, generator=g)
    data["next", "agents", "reward"] = torch.randn(ENVS, STEPS, N_AGENTS, 1, generator=g)
    with torch.no_grad():
        loss.actor_network(data)
    loss.value_estimator(data, params=loss.critic_network_params)
    return data


def test_ermas_loss_owns_the_planner_side():
    """Handed to ErmasLoss, the component's critic is among the loss's parameters and in its
    state_dict, and the loss adds ``loss_planner_critic`` (the component's own loss) to its
    output; the agents' terms are those of a loss without it."""
    planner = PlannerAdvantage(_critic(weight=0.2))
    owner, plain = _agents_loss(planner), _agents_loss(None)
    data = _with_agents(owner.planner_advantage(_trajectories()), owner)
    batch = data.reshape(-1)
    out, reference = owner(batch), plain(batch)
    assert "loss_planner_critic" in owner.out_keys and "loss_planner_critic" not in plain.out_keys
    assert "loss_planner_critic" not in reference.keys()
    torch.testing.assert_close(out["loss_planner_critic"], planner.loss(batch)["loss_planner_critic"])
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[key], reference[key])
    owned = {id(p) for p in owner.parameters()}
    assert all(id(p) in owned for p in planner.critic.parameters())
    assert any(k.startswith("planner_advantage.critic.") for k in owner.state_dict())
    assert ("planner", "value_target") in owner.in_keys
    out["loss_planner_critic"].backward()
    assert all(p.grad is not None for p in planner.critic.parameters())
    assert all(p.grad is None for p in owner.actor_network_params.values(True, True))


def test_ermas_loss_refuses_another_planner_side():
    with pytest.raises(TypeError, match="planner_advantage must be a PlannerAdvantage"):
        _agents_loss(_critic())
