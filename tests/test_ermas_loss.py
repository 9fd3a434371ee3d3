"""Tests for :class:`torchrl_ermas.objectives.ErmasLoss` and its hydra config."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torchrl.modules import MultiAgentMLP, ProbabilisticActor
from torchrl.objectives import LossModule
from torchrl.objectives.multiagent import MAPPOLoss
from torchrl.objectives.value import MultiAgentGAE

from torchrl_ermas.objectives import ErmasLoss, LagrangeMultiplier

N_AGENTS = 3
OBS_DIM = 4
N_ACTIONS = 3
BATCH = (5, 6)
# the authors' coefficients, shared by ErmasLoss and the reference losses
COEFFS = {
    "clip_epsilon": 0.3,
    "entropy_coeff": 0.025,
    "critic_coeff": 0.05,
    "loss_critic_type": "l2",
}


def _make_actor(group: str = "agents", share_params: bool = True, seed: int = 0) -> ProbabilisticTensorDictSequential:
    torch.manual_seed(seed)
    return ProbabilisticActor(
        TensorDictModule(
            MultiAgentMLP(
                OBS_DIM,
                N_ACTIONS,
                N_AGENTS,
                centralized=False,
                share_params=share_params,
                depth=1,
                num_cells=8,
            ),
            in_keys=[(group, "observation")],
            out_keys=[(group, "logits")],
        ),
        in_keys=[(group, "logits")],
        out_keys=[(group, "action")],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def _make_critic(group: str = "agents", share_params: bool = True, seed: int = 1) -> TensorDictModule:
    torch.manual_seed(seed)
    return TensorDictModule(
        MultiAgentMLP(
            OBS_DIM,
            1,
            N_AGENTS,
            centralized=True,
            share_params=share_params,
            depth=1,
            num_cells=8,
        ),
        in_keys=[(group, "observation")],
        out_keys=[(group, "state_value")],
    )


def _make_data(
    actor: ProbabilisticTensorDictSequential,
    group: str = "agents",
    planner: str = "planner",
    with_advantage: bool = True,
    seed: int = 2,
) -> TensorDictBase:
    """A synthetic ``[*BATCH]`` rollout of the agents, with a planner advantage."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*BATCH, *shape, generator=generator)

    done = torch.rand(*BATCH, 1, generator=generator) < 0.2
    data = TensorDict(
        {
            group: {"observation": randn(N_AGENTS, OBS_DIM)},
            planner: {"advantage": 2.0 * randn(1, 1) + 1.0},
            "next": {
                group: {
                    "observation": randn(N_AGENTS, OBS_DIM),
                    "reward": randn(N_AGENTS, 1),
                },
                "done": done,
                "terminated": done.clone(),
            },
        },
        batch_size=BATCH,
    )
    with torch.no_grad():
        actor(data)
    # an older behaviour policy, so that the ratios move away from 1 and clip
    data[group, "action_log_prob"] += 0.5 * randn(N_AGENTS)
    if with_advantage:
        data[group, "advantage"] = 3.0 * randn(N_AGENTS, 1) - 1.0
        data[group, "value_target"] = randn(N_AGENTS, 1)
    return data


def _make_mappo(actor: ProbabilisticTensorDictSequential, critic: TensorDictModule, **kwargs: object) -> MAPPOLoss:
    """TorchRL's MAPPO loss, keyed like ErmasLoss' defaults, as a reference."""
    loss = MAPPOLoss(actor, critic, **COEFFS, **kwargs)
    loss.set_keys(
        advantage=("agents", "advantage"),
        value_target=("agents", "value_target"),
        value=("agents", "state_value"),
        reward=("agents", "reward"),
    )
    return loss


def _standardize(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True)


def _params(loss: LossModule, name: str) -> list[torch.Tensor]:
    if loss.functional:
        return list(getattr(loss, f"{name}_params").values(True, True))
    return list(getattr(loss, name).parameters())


def _grads(loss: LossModule, value: torch.Tensor, name: str) -> list[torch.Tensor]:
    return torch.autograd.grad(value, _params(loss, name), retain_graph=True, allow_unused=True)


def _assert_matches(
    loss: LossModule,
    out: TensorDictBase,
    reference: LossModule,
    expected: TensorDictBase,
    atol: float = 1e-6,
) -> None:
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[key], expected[key], atol=atol, rtol=1e-5)
    for got, want in zip(
        _grads(loss, out["loss_objective"], "actor_network"),
        _grads(reference, expected["loss_objective"], "actor_network"),
    ):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


class TestErmasLoss:
    @pytest.mark.parametrize("functional", [True, False])
    @pytest.mark.parametrize("share_params", [True, False])
    def test_combined_advantage(self, functional, share_params):
        """Per-agent lambda: clipped PPO on (lambda * A_own - A_p) / (1 + lambda)."""
        actor = _make_actor(share_params=share_params)
        critic = _make_critic(share_params=share_params)
        data = _make_data(actor)
        multiplier = torch.tensor([0.0, 0.5, 8.0])
        lagrange = LagrangeMultiplier(N_AGENTS)
        lagrange.multiplier.data.copy_(multiplier)
        loss = ErmasLoss(actor, critic, lagrange, functional=functional)
        reference = _make_mappo(actor, critic, normalize_advantage=False, functional=functional)
        own = _standardize(data["agents", "advantage"], (0, 1))
        planner = _standardize(data["planner", "advantage"], (0, 1, 2, 3))
        lam = multiplier.unsqueeze(-1)
        combined = data.clone()
        combined["agents", "advantage"] = (lam * own - planner) / (1 + lam)
        _assert_matches(loss, loss(data), reference, reference(combined))

    @pytest.mark.parametrize("functional", [True, False])
    def test_large_lambda_is_mappo(self, functional):
        actor, critic = _make_actor(), _make_critic()
        data = _make_data(actor)
        lagrange = LagrangeMultiplier(N_AGENTS, init=1e6, max_value=1e7)
        loss = ErmasLoss(actor, critic, lagrange, functional=functional)
        reference = _make_mappo(actor, critic, functional=functional)
        _assert_matches(loss, loss(data), reference, reference(data), atol=1e-5)

    def test_zero_lambda_is_ppo_on_negated_planner_advantage(self):
        actor, critic = _make_actor(), _make_critic()
        data = _make_data(actor)
        lagrange = LagrangeMultiplier(N_AGENTS, init=0.0)
        loss = ErmasLoss(actor, critic, lagrange)
        reference = _make_mappo(actor, critic)
        adversarial = data.clone()
        adversarial["agents", "advantage"] = -data["planner", "advantage"].expand(*BATCH, N_AGENTS, 1)
        _assert_matches(loss, loss(data), reference, reference(adversarial))

    def test_surrogate_clips_the_combined_advantage(self):
        """The clip acts on the combined advantage, not on each term separately."""
        actor, critic = _make_actor(), _make_critic()
        data = _make_data(actor)
        lagrange = LagrangeMultiplier(N_AGENTS, init=1.0)
        loss = ErmasLoss(actor, critic, lagrange, normalize_advantage=False, reduction="none")
        out = loss(data)
        own, planner = data["agents", "advantage"], data["planner", "advantage"]
        with torch.no_grad():
            log_prob = actor.get_dist(data).log_prob(data["agents", "action"])
        ratio = (log_prob - data["agents", "action_log_prob"]).exp().unsqueeze(-1)
        combined = (own - planner) / 2
        surrogate = torch.minimum(ratio * combined, ratio.clamp(0.7, 1.3) * combined)
        assert out["clip_fraction"] > 0
        torch.testing.assert_close(out["loss_objective"], -surrogate.squeeze(-1))

    def test_gradient_isolation(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        out = loss(_make_data(actor))
        for key, trained, untouched in (
            ("loss_objective", "actor_network", "critic_network"),
            ("loss_entropy", "actor_network", "critic_network"),
            ("loss_critic", "critic_network", "actor_network"),
        ):
            grads = _grads(loss, out[key], trained)
            assert any(g is not None and g.abs().sum() > 0 for g in grads), key
            grads = _grads(loss, out[key], untouched)
            assert all(g is None or g.abs().sum() == 0 for g in grads), key

    def test_lagrange_gets_no_gradient(self):
        actor, critic = _make_actor(), _make_critic()
        lagrange = LagrangeMultiplier(N_AGENTS)
        loss = ErmasLoss(actor, critic, lagrange)
        out = loss(_make_data(actor))
        (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
        assert lagrange.multiplier.grad is None

    def test_lagrange_update_between_forward_and_backward(self):
        """Regression: the loss must not hold a view of lambda that update() bumps."""
        actor, critic = _make_actor(), _make_critic()
        lagrange = LagrangeMultiplier(N_AGENTS, init=8.0, lr=1.0)
        loss = ErmasLoss(actor, critic, lagrange)
        out = loss(_make_data(actor))
        lagrange.update(torch.ones(N_AGENTS), epsilon=0.0)
        out["loss_objective"].backward()
        torch.testing.assert_close(out["lagrange_multiplier"], torch.full((3,), 8.0))

    def test_outputs(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS, init=2.0))
        out = loss(_make_data(actor))
        assert set(loss.out_keys) <= set(out.keys())
        assert "explained_variance" in out.keys()
        for key, value in out.items():
            if key == "lagrange_multiplier":
                torch.testing.assert_close(value, torch.full((N_AGENTS,), 2.0))
            else:
                assert value.shape == (), key
            if not key.startswith("loss_"):
                assert not value.requires_grad, key

    def test_reduction_none(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), reduction="none")
        out = loss(_make_data(actor))
        for key in ("loss_objective", "loss_critic", "loss_entropy"):
            assert out[key].shape == (*BATCH, N_AGENTS), key

    def test_value_estimator_computes_missing_advantage(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        data = _make_data(actor, with_advantage=False)
        assert isinstance(loss.value_estimator, MultiAgentGAE)
        out = loss(data)
        with torch.no_grad():
            loss.value_estimator(data)
        assert data["agents", "advantage"].shape == (*BATCH, N_AGENTS, 1)
        _assert_matches(loss, out, loss, loss(data))

    def test_nested_keys(self):
        """A custom group name gives the same loss as the default group keys."""
        actor, critic = _make_actor(), _make_critic()
        team_actor, team_critic = _make_actor("team", seed=3), _make_critic("team")
        team_actor.load_state_dict(actor.state_dict())
        team_critic.load_state_dict(critic.state_dict())
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS, init=1.5))
        team_loss = ErmasLoss(team_actor, team_critic, LagrangeMultiplier(N_AGENTS, init=1.5))
        team_loss.set_keys(
            advantage=("team", "advantage"),
            value_target=("team", "value_target"),
            value=("team", "state_value"),
            reward=("team", "reward"),
            planner_advantage=("boss", "advantage"),
        )
        assert team_loss.tensor_keys.action == ("team", "action")
        assert team_loss.tensor_keys.sample_log_prob == ("team", "action_log_prob")
        assert ("boss", "advantage") in team_loss.in_keys
        for with_advantage in (True, False):
            data = _make_data(actor, with_advantage=with_advantage)
            team_data = data.clone()
            team_data.rename_key_("agents", "team")
            team_data.rename_key_(("next", "agents"), ("next", "team"))
            team_data.rename_key_("planner", "boss")
            _assert_matches(loss, loss(data), team_loss, team_loss(team_data))

    def test_set_keys(self):
        loss = ErmasLoss(_make_actor(), _make_critic(), LagrangeMultiplier(N_AGENTS))
        assert loss.tensor_keys.planner_advantage == ("planner", "advantage")
        assert loss.tensor_keys.advantage == ("agents", "advantage")
        assert loss.tensor_keys.done == "done"
        assert ("planner", "advantage") in loss.in_keys
        with pytest.raises(ValueError, match="not_a_key"):
            loss.set_keys(not_a_key="x")
        loss.set_keys(planner_advantage=("boss", "adv"))
        assert ("boss", "adv") in loss.in_keys
        loss.set_keys(planner_advantage=None)
        assert loss.tensor_keys.planner_advantage == ("planner", "advantage")

    def test_missing_planner_advantage(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        data = _make_data(actor).exclude(("planner", "advantage"))
        with pytest.raises(KeyError, match=r"planner advantage at key \('planner', 'advantage'\)"):
            loss(data)

    @pytest.mark.parametrize("shape", [(1,), (2, 1), (N_AGENTS, 2)])
    def test_bad_planner_advantage_shape(self, shape):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        data = _make_data(actor)
        data["planner"] = TensorDict({"advantage": torch.zeros(*BATCH, *shape)}, BATCH)
        with pytest.raises(ValueError, match="planner advantage"):
            loss(data)

    def test_agent_count_mismatch(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS + 1))
        with pytest.raises(ValueError, match="4 agents"):
            loss(_make_data(actor))

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"clip_epsilon": -0.2}, r"clip_epsilon must be a finite number > 0 and < 1, got -0.2"),
            ({"clip_epsilon": float("inf")}, r"clip_epsilon must be a finite number > 0"),
            ({"clip_epsilon": 1.5}, r"clip_epsilon must be a finite number > 0 and < 1, got 1.5"),  # log1p(-1.5)
            ({"clip_epsilon": (1.0, 0.3)}, r"clip_epsilon must be a finite number > 0 and < 1, got 1.0"),
            ({"clip_epsilon": (0.1, 0.0)}, r"clip_epsilon must be a finite number > 0, got 0.0"),
            ({"entropy_coeff": float("nan")}, r"entropy_coeff must be a finite number >= 0, got nan"),
            ({"critic_coeff": -1.0}, r"critic_coeff must be a finite number >= 0"),
            ({"clip_value": 0.0}, r"clip_value must be a finite number > 0"),
            ({"loss_critic_type": "l3"}, r"loss_critic_type must be one of \('l1', 'l2', 'smooth_l1'\), got 'l3'"),
            ({"reduction": "average"}, r"reduction must be one of"),
            ({"normalize_advantage": "yes"}, r"normalize_advantage must be a bool"),
        ],
    )
    def test_bad_settings_are_refused_at_construction(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            ErmasLoss(_make_actor(), _make_critic(), LagrangeMultiplier(N_AGENTS), **kwargs)

    def test_a_critic_writing_another_value_key_is_named(self):
        """A ValueOperator-style critic writes a root "state_value": the error says what to set."""
        actor, critic = _make_actor(), _make_critic()
        critic.out_keys = ["state_value"]
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        match = (
            r"the critic writes \['state_value'\] but ErmasLoss reads .*\('agents', 'state_value'\)"
            r".*set_keys\(value="
        )
        with pytest.raises(ValueError, match=match):
            loss(_make_data(actor))

    def test_torchrl_forms_of_the_settings_are_accepted(self):
        """As in ClipPPOLoss: (low, high) clip bounds, per-key entropy weights, None."""
        actor, critic = _make_actor(), _make_critic()
        ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), clip_epsilon=(0.1, 0.3))
        ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), entropy_coeff={("agents", "action"): 0.01})
        ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), entropy_coeff=None, critic_coeff=None)
        with pytest.raises(ValueError, match="entropy_coeff must be a finite number >= 0"):
            ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), entropy_coeff={("agents", "action"): -1.0})

    def test_bad_constructor_args(self):
        actor, critic = _make_actor(), _make_critic()
        with pytest.raises(TypeError, match="lagrange"):
            ErmasLoss(actor, critic, N_AGENTS)
        with pytest.raises(ValueError, match="advantage_norm"):
            ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS), advantage_norm=object())

    def test_state_dict_carries_lagrange(self):
        actor, critic = _make_actor(), _make_critic()
        lagrange = LagrangeMultiplier(N_AGENTS, lr=1.0, rule="gradient_ascent")
        loss = ErmasLoss(actor, critic, lagrange)
        lagrange.update(torch.tensor([1.0, 2.0, 3.0]), epsilon=0.0)
        lagrange.freeze()
        state = loss.state_dict()
        assert {"lagrange.multiplier", "lagrange._frozen"} <= set(state)
        restored = ErmasLoss(_make_actor(), _make_critic(), LagrangeMultiplier(N_AGENTS))
        restored.load_state_dict(state)
        torch.testing.assert_close(restored.lagrange.value, torch.tensor([2.0, 3.0, 4.0]))
        assert restored.lagrange.frozen

    def test_reset_parameters_recursive(self):
        actor, critic = _make_actor(), _make_critic()
        loss = ErmasLoss(actor, critic, LagrangeMultiplier(N_AGENTS))
        before = loss.actor_network_params.clone()
        loss.reset_parameters_recursive()
        after = loss.actor_network_params
        assert any((b != a).any() for b, a in zip(before.values(True, True), after.values(True, True)))
        torch.testing.assert_close(loss.lagrange.value, torch.full((N_AGENTS,), 1.0))


if __name__ == "__main__":
    pytest.main([__file__, "--capture", "no", "--exitfirst"])
