"""The reference statistics of the original AI Economist under uniform-random masked agents
(free market and US federal for Gather-Trade-Build, free market for Gather-Build),
reproduced within 2 standard errors."""

from __future__ import annotations

import pytest
from torchrl_ermas.envs.economy import EconomyEnv, FreeMarketPlanner, USFederalPlanner
from torchrl_ermas.envs.economy.reference import (
    REFERENCE_RANDOM_POLICY,
    compare_to_reference,
    random_policy_statistics,
)

PLANNERS = {"free_market": FreeMarketPlanner, "us_federal": USFederalPlanner}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("tier,planner", list(REFERENCE_RANDOM_POLICY))
def test_random_policy_statistics_match_reference(tier, planner):
    env = EconomyEnv(160, tier=tier, planner_action="rates", spatial_observation=False, seed=1234)
    stats = random_policy_statistics(env, PLANNERS[planner]())
    n_ref, reference = REFERENCE_RANDOM_POLICY[tier, planner]
    rows = compare_to_reference(stats, reference, n_ref)
    far = {name: row for name, row in rows.items() if abs(row[-1]) > 2}
    assert not far, f"more than 2 s.e. from the reference: {far}"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
