"""The economy's boundary: immutable settings checked once, components that read settings and
state tensors, never the environment."""
from __future__ import annotations

import dataclasses

import pytest
from torchrl_ermas.envs.economy import TIERS, EconomyEnv
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
