"""The economy's boundary: immutable settings checked once, components that read settings and
state tensors, never the environment."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchrl_ermas.envs.economy import TIERS, EconomyEnv
from torchrl_ermas.envs.economy.actions import ActionLayout
from torchrl_ermas.envs.economy.observations import agent_observation_size, planner_observation_size
from torchrl_ermas.envs.economy.settings import EconomySettings


@pytest.mark.parametrize("tier", TIERS)
def test_env_settings_are_immutable_and_forwarded(tier):
    env = EconomyEnv(2, tier=tier, episode_length=20, period=10, spatial_observation=True)
    assert isinstance(env.settings, EconomySettings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.settings.period = 5
    assert (env.tier, env.period, env.episode_length) == (tier, 10, 20)
    assert env.spatial_observation == (tier != "labour")
    assert env.settings.n_brackets == env.tax.n_brackets


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tier": "moon"}, "tier"),
        ({"period": 7}, "period must be a positive divisor"),
        ({"tier": "gather_build", "n_agents": 3}, "n_agents must be 4"),
        ({"energy_cost": -1.0}, "energy_cost"),
    ],
)
def test_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EconomySettings(**kwargs)


@pytest.mark.parametrize("tier", TIERS)
def test_action_layout_sizes_the_specs_and_partitions_the_actions(tier):
    env = EconomyEnv(2, tier=tier, episode_length=20, period=10)
    layout = env.actions
    assert layout == ActionLayout.from_settings(env.settings)
    assert env.full_action_spec["agents", "action"].space.n == layout.n_actions == env.n_actions
    assert env.reset()["agents", "action_mask"].shape[-1] == layout.n_actions
    if tier == "labour":
        assert layout.n_actions == env.max_hours + 1
        return
    decoded = layout.decode_map(torch.arange(layout.n_actions))  # element-wise, any shape
    orders = torch.zeros_like(decoded.build) if decoded.resource is None else decoded.resource >= 0
    kinds = decoded.build.long() + orders.long() + (decoded.direction >= 0).long()
    assert kinds.tolist() == [0] + [1] * (layout.n_actions - 1)  # the no-op does nothing, the rest one thing
    assert decoded.direction[layout.moves :].tolist() == list(range(layout.n_moves))
    if tier == "gather_trade_build":
        orders = slice(layout.orders, layout.moves)
        triples = set(
            zip(decoded.resource[orders].tolist(), decoded.is_bid[orders].tolist(), decoded.price[orders].tolist())
        )
        assert len(triples) == layout.n_orders == 2 * env.settings.n_resources * env.settings.n_prices


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("planner_action", ["discrete", "rates"])
def test_observation_sizes_by_arithmetic_match_the_observations(tier, spatial, planner_action):
    kwargs = {"n_agents": 3, "bracket_cutoffs": (0, 5, 50)} if tier == "labour" else {}
    env = EconomyEnv(
        2,
        tier=tier,
        episode_length=20,
        period=10,
        spatial_observation=spatial,
        planner_action=planner_action,
        seed=0,
        **kwargs,
    )
    sizes = agent_observation_size(env.settings), planner_observation_size(env.settings)
    spec = env.full_observation_spec
    assert (spec["agents", "observation"].shape[-1], spec["planner", "observation"].shape[-1]) == sizes
    assert (("agents", "world_map") in spec.keys(True)) == (spatial and tier != "labour")
    td = env.rollout(3)
    for prefix in ((), ("next",)):
        agent, planner = td[(*prefix, "agents", "observation")], td[(*prefix, "planner", "observation")]
        assert (agent.shape[-1], planner.shape[-1]) == sizes


@pytest.mark.parametrize("tier", TIERS)
def test_observing_is_side_effect_free(tier):
    env = EconomyEnv(3, tier=tier, episode_length=20, period=5, seed=0)
    td = env.reset()
    for _ in range(6):
        td = env.step_mdp(env.step(env.rand_action(td)))
    before = env._state.clone()
    generator = env._generator.get_state()
    first, second = env._observe(), env._observe()
    assert set(before.keys(True, True)) == set(env._state.keys(True, True)) and (before == env._state).all()
    assert torch.equal(generator, env._generator.get_state())
    assert (first == second).all() and "reward" not in first["agents"].keys()
