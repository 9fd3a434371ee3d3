"""The exact epsilon frontier of the bimatrix game against hand-checkable cases."""

from __future__ import annotations

import pytest
import torch
from torchrl_ermas.envs import SequentialBimatrixEnv
from torchrl_ermas.envs.bimatrix_analysis import exact_returns
from torchrl_ermas.envs.bimatrix_frontier import (
    epsilon_frontier,
    information_states,
    selfish_logits,
    tabular_policy,
)

TOLERANCE = 0.01
EPSILONS = (-1.0, 0.0, 0.25, 0.5, 1.0, 2.0)
#: "dilemma": one step of cooperation costs the planner 0.4 and the cooperator 0.3 regret
PLANNER_COST_PER_REGRET = 0.4 / 0.3


pytestmark = pytest.mark.usefixtures("one_thread")


def nash_returns(env: SequentialBimatrixEnv):
    logits = selfish_logits(env)
    return exact_returns(env, tabular_policy(env, logits, information_states(env)[0]))


@pytest.fixture(scope="module")
def games():
    """Per observation mode: the 10-step game, its Nash returns and its frontier."""
    torch.set_num_threads(1)
    out = {}
    for observe in ("own", "joint"):
        env = SequentialBimatrixEnv(1, max_steps=10, observe=observe)
        out[observe] = env, nash_returns(env), epsilon_frontier(env, EPSILONS, tolerance=TOLERANCE)
    return out


@pytest.fixture(params=["own", "joint"])
def game(request, games):
    return games[request.param]


class TestOneStep:
    """From the cooperative corner of the 2x2 game with one step, everything is by hand."""

    def test_matches_the_hand_solution(self):
        env = SequentialBimatrixEnv(1, grid_size=2, max_steps=1, start_position=(1, 1))
        epsilons = [0.0, 0.06, 0.15, 0.3, 1.0]
        points = epsilon_frontier(env, epsilons, iterations=300, tolerance=1e-3)
        for eps, point in zip(epsilons, points):
            cooperation = min(1.0, eps / 0.3)  # each agent's probability of staying up
            assert point.planner_return == pytest.approx(0.9 - 0.8 * cooperation, abs=0.01)
            assert point.agent_returns[0] == pytest.approx(0.35 + 0.1 * cooperation, abs=0.01)
            assert max(point.regrets) <= eps + 1e-3
            assert point.feasible

    def test_exact_returns_enumerate_the_joint_actions(self):
        env = SequentialBimatrixEnv(1, grid_size=2, max_steps=1, start_position=(1, 1))
        probs = torch.zeros(1, 4, 2, 3)
        probs[..., 0] = 0.25  # stay (cooperate)
        probs[..., 1] = 0.25  # +1: clipped at the top, cooperates as well
        probs[..., 2] = 0.5  # -1: defect
        returns = exact_returns(env, probs)
        assert returns.planner.item() == pytest.approx(0.9 - 0.4 * (0.5 + 0.5))
        # agent 0: 0.35 + 0.4 * E[c_1] - 0.3 * E[c_0]; the best response defects (c_0 = 0)
        assert returns.agents.tolist() == pytest.approx([0.35 + 0.2 - 0.15] * 2)
        assert returns.regrets.tolist() == pytest.approx([0.15, 0.15])


class TestFrontier:
    def test_selfish_warm_start_is_the_nash_equilibrium(self, game):
        env, nash, _ = game
        assert nash.regrets.max() < 1e-3
        # defect everywhere: only the walk down from the start keeps the planner below 0.9
        assert nash.planner.item() < 0.9 * env.max_steps
        assert nash.agents.min() > 0.35 * env.max_steps

    def test_non_positive_epsilon_gives_the_nash_planner_return(self, game):
        _, nash, points = game
        for point in points[:2]:
            assert point.planner_return == pytest.approx(nash.planner.item(), abs=0.05)
        assert not points[0].feasible  # no policy has a negative regret
        assert points[1].feasible

    def test_regrets_within_epsilon(self, game):
        _, _, points = game
        for point in points[1:]:
            assert point.feasible
            assert max(point.regrets) <= point.epsilon + TOLERANCE

    def test_planner_return_non_increasing_and_below_nash(self, game):
        _, nash, points = game
        planner = [p.planner_return for p in points]
        assert all(b <= a + 1e-3 for a, b in zip(planner, planner[1:])), planner
        assert max(planner) <= nash.planner.item() + 1e-3
        assert planner[-1] < nash.planner.item() - 1.0  # epsilon = 2 buys cooperation

    def test_own_observation_frontier_is_linear_in_regret(self, games):
        """Seeing only its own coordinate, no agent can punish: each unit of cooperation
        costs its regret 0.3 and the planner 0.4, so J_p = J_p(Nash) - 4/3 (r_0 + r_1)."""
        _, nash, points = games["own"]
        for point in points[1:]:
            expected = nash.planner.item() - PLANNER_COST_PER_REGRET * sum(point.regrets)
            assert point.planner_return == pytest.approx(expected, abs=0.05)
            assert min(point.regrets) >= point.epsilon - 0.1  # the constraint binds

    def test_joint_observation_buys_more_cooperation(self, games):
        """Agents that see each other can punish deviations, so a small epsilon already
        buys (nearly) full cooperation, far below the "own" frontier."""
        own, joint = games["own"][2], games["joint"][2]
        for p_own, p_joint in zip(own[3:], joint[3:]):  # epsilon >= 0.5
            assert p_joint.planner_return < p_own.planner_return - 1.0, (p_own, p_joint)
            assert p_joint.planner_return < 2.0  # full cooperation from the start: ~1.0


class TestInputs:
    def test_information_states_follow_the_observation(self):
        def same(index):  # [9, 9]: which positions share an information state
            return index[:, None] == index[None, :]

        own, n_own = information_states(SequentialBimatrixEnv(1, grid_size=3, observe="own"))
        rows, cols = torch.arange(9) // 3, torch.arange(9) % 3
        assert n_own == 3
        assert torch.equal(same(own[:, 0]), same(rows))
        assert torch.equal(same(own[:, 1]), same(cols))
        joint, n_joint = information_states(SequentialBimatrixEnv(1, grid_size=3))
        assert n_joint == 9
        assert torch.equal(same(joint[:, 0]), torch.eye(9, dtype=torch.bool))
        assert torch.equal(same(joint[:, 1]), torch.eye(9, dtype=torch.bool))

    def test_time_observation_gives_one_table_per_step(self):
        env = SequentialBimatrixEnv(1, max_steps=3, time_obs=True)
        assert selfish_logits(env, steps=1).shape == (3, 2, 16, 3)

    def test_batched_returns_match_one_by_one(self):
        env = SequentialBimatrixEnv(1, max_steps=4)
        probs = torch.softmax(torch.randn(3, 4, 16, 2, 3, generator=torch.Generator().manual_seed(0)), -1)
        batched = exact_returns(env, probs)
        for i in range(3):
            single = exact_returns(env, probs[i])
            assert torch.allclose(batched.planner[i], single.planner)
            assert torch.allclose(batched.regrets[i], single.regrets)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"epsilons": []}, "epsilons"),
            ({"epsilons": [1.0], "penalty": 0.0}, "penalty"),
            ({"epsilons": [1.0], "lr": -1.0}, "lr"),
            ({"epsilons": [1.0], "iterations": 0}, "iterations"),
            ({"epsilons": [1.0], "dual_interval": 0}, "dual_interval"),
            ({"epsilons": [1.0, float("nan")]}, r"epsilons must be a finite number, got nan"),
            ({"epsilons": [1.0], "warm_start_steps": -1}, r"warm_start_steps must be an int >= 0"),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            epsilon_frontier(SequentialBimatrixEnv(1, max_steps=2), **kwargs)

    def test_officer_planner_rejected(self):
        with pytest.raises(ValueError, match="planner_mode"):
            epsilon_frontier(SequentialBimatrixEnv(1, max_steps=2, planner="officers"), [1.0])

    def test_probs_shape_checked(self):
        with pytest.raises(ValueError, match="probs"):
            exact_returns(SequentialBimatrixEnv(1, max_steps=2), torch.ones(3, 16, 2, 3) / 3)


@pytest.mark.parametrize("observe", ["joint", "own"])
def test_policy_table_matches_the_policy_on_rollout_observations(observe):
    """policy_table reads the env's public observation builder: its entry at each visited
    (step, position) equals the policy's probabilities on the rollout's own observation."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl_ermas.envs.bimatrix_analysis import policy_table

    from torchrl_ermas.training import PPOConfig
    from torchrl_ermas.training.models import make_policy

    torch.manual_seed(0)
    env = SequentialBimatrixEnv(6, grid_size=3, observe=observe, time_obs=True, max_steps=4)
    actor = make_policy(env, "agents", PPOConfig(hidden=8), torch.device("cpu"))
    table = policy_table(actor, env)  # [T, n * n, 2, 3]
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        data = env.rollout(4, actor)
    probs = actor.get_dist(data).probs  # [B, T, 2, 3]
    flat = (data["planner", "observation"][..., 0, :9]).argmax(-1)  # [B, T]
    steps = torch.arange(4).expand_as(flat)
    torch.testing.assert_close(table[steps, flat], probs)
