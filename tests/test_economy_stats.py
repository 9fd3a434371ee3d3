"""The reference statistics of the original AI Economist under random masked agents
(uniform or builder policies; free market, US federal, fixed rates and Saez planners; the
Gather-Trade-Build and Gather-Build tiers), reproduced within 2 standard errors.

A 2 s.e. band holds about 95% of the statistics of a faithful simulator, so over the table's
~100 statistics a few excursions are expected: up to 5% of them may lie between 2 and 3 s.e.,
none beyond 3 s.e.
"""

from __future__ import annotations

import functools

import pytest
from torchrl_ermas.envs.economy.reference import (
    REFERENCE_RANDOM_POLICY,
    compare_to_reference,
    reference_statistics,
)

BAND, LIMIT, EXCURSIONS = 2.0, 3.0, 0.05

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _z_scores(tier: str, planner: str, policy: str) -> dict[str, float]:
    """z-score of each statistic of a reference row, ours from 160 episodes."""
    stats = reference_statistics(tier, planner, policy, batch_size=160, seed=1234)
    n_ref, reference = REFERENCE_RANDOM_POLICY[tier, planner, policy]
    return {name: row[-1] for name, row in compare_to_reference(stats, reference, n_ref).items()}


@pytest.mark.parametrize("tier,planner,policy", list(REFERENCE_RANDOM_POLICY))
def test_random_policy_statistics_match_reference(tier, planner, policy):
    far = {name: round(z, 2) for name, z in _z_scores(tier, planner, policy).items() if abs(z) > LIMIT}
    assert not far, f"more than {LIMIT} s.e. from the reference: {far}"


def test_few_statistics_leave_the_two_standard_error_band():
    z = {(*key, name): value for key in REFERENCE_RANDOM_POLICY for name, value in _z_scores(*key).items()}
    outside = {key: round(value, 2) for key, value in z.items() if abs(value) > BAND}
    assert len(outside) <= EXCURSIONS * len(z), f"{len(outside)} of {len(z)} beyond {BAND} s.e.: {outside}"
