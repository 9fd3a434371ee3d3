"""Tests of the batched matrix games: specs, payoffs, dynamics, resets, seeding, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs
from torchrl_ermas.envs import (
    NMatrixGameEnv,
    SequentialBimatrixEnv,
    dilemma_payoffs,
    seed0_payoffs,
)

STAY, UP, DOWN = 0, 1, 2


def _step(env, agent_actions, planner_actions=None):
    td = TensorDict(
        {"agents": TensorDict({"action": torch.as_tensor(agent_actions)}, [*env.batch_size, env.n_agents])},
        env.batch_size,
    )
    if planner_actions is not None:
        td["planner"] = TensorDict({"action": torch.as_tensor(planner_actions)}, [*env.batch_size, 1])
    return env.step(td)["next"]


def pure_nash_equilibria(payoffs: torch.Tensor) -> list[tuple[int, int]]:
    """Pure Nash equilibria of the stage game ``payoffs = [r_p, r_row, r_col]`` by enumeration."""
    _, r_row, r_col = payoffs
    n = r_row.shape[0]
    return [
        (i, j)
        for i, j in itertools.product(range(n), range(n))
        if r_row[i, j] >= r_row[:, j].max() and r_col[i, j] >= r_col[i, :].max()
    ]


class TestSpecs:
    @pytest.mark.parametrize("planner", ["passive", "officers"])
    @pytest.mark.parametrize("observe", ["joint", "own"])
    @pytest.mark.parametrize("payoffs", ["dilemma", "seed0"])
    @pytest.mark.parametrize("time_obs", [False, True])
    def test_bimatrix(self, planner, observe, payoffs, time_obs):
        env = SequentialBimatrixEnv(
            5, planner=planner, observe=observe, payoffs=payoffs, time_obs=time_obs, max_steps=7
        )
        check_env_specs(env, seed=0)

    @pytest.mark.parametrize("batch_size", [1, (2, 3)])
    def test_bimatrix_batch_shapes(self, batch_size):
        env = SequentialBimatrixEnv(batch_size, planner="officers", agent_id=False)
        check_env_specs(env, seed=0)

    @pytest.mark.parametrize("n_agents,grid_size", [(1, 2), (3, 4), (3, 7)])
    @pytest.mark.parametrize("time_obs", [False, True])
    def test_nmatrix(self, n_agents, grid_size, time_obs):
        env = NMatrixGameEnv(4, n_agents=n_agents, grid_size=grid_size, time_obs=time_obs)
        check_env_specs(env, seed=0)

    def test_contract_shapes(self):
        env = SequentialBimatrixEnv(6, planner="officers", max_steps=4)
        rollout = env.rollout(4)
        assert rollout["agents", "observation"].shape == (6, 4, 2, 16 + 2)
        assert rollout["agents", "action"].shape == (6, 4, 2)
        assert rollout["next", "agents", "reward"].shape == (6, 4, 2, 1)
        assert rollout["planner", "observation"].shape == (6, 4, 1, 16 + 13)
        assert rollout["planner", "action"].shape == (6, 4, 1)
        assert rollout["next", "planner", "reward"].shape == (6, 4, 1, 1)
        for flag in ("done", "terminated", "truncated"):
            assert rollout["next", flag].shape == (6, 4, 1)

    def test_passive_planner_has_no_action(self):
        env = SequentialBimatrixEnv(2)
        assert ("planner", "action") not in env.full_action_spec.keys(True, True)
        assert ("planner", "reward") in env.full_reward_spec.keys(True, True)


class TestPayoffs:
    def test_dilemma_values(self):
        r = dilemma_payoffs(4)
        # cell (row, col) = (1, 3): c_row = 1/3, c_col = 1
        assert r[0, 1, 3].item() == pytest.approx(0.9 - 0.4 * (1 / 3 + 1))
        assert r[1, 1, 3].item() == pytest.approx(0.35 + 0.4 * 1 - 0.3 / 3)
        assert r[2, 1, 3].item() == pytest.approx(0.35 + 0.4 / 3 - 0.3 * 1)
        agents = r[1:]
        assert agents.min() >= 0 and agents.max() <= 1
        assert r[0].min() >= 0 and r[0].max() <= 1

    @pytest.mark.parametrize("n", [2, 4, 6])
    def test_dilemma_unique_nash_is_tragedy_of_commons(self, n):
        r = dilemma_payoffs(n)
        assert pure_nash_equilibria(r) == [(0, 0)]
        assert r[:, 0, 0].tolist() == pytest.approx([0.9, 0.35, 0.35])
        assert r[:, n - 1, n - 1].tolist() == pytest.approx([0.1, 0.45, 0.45])

    def test_seed0_matches_authors_tables(self):
        r = seed0_payoffs(4)
        assert r[0, 0].tolist() == pytest.approx([0.5488, 0.7152, 0.6028, 0.5449], abs=1e-4)
        assert r[1, 1].tolist() == pytest.approx([0.9786, 0.7992, 0.4615, 0.7805], abs=1e-4)
        assert r[2, 3].tolist() == pytest.approx([0.6668, 0.6706, 0.2104, 0.1289], abs=1e-4)
        # the authors' matrices have no pure Nash equilibrium (best responses cycle)
        assert pure_nash_equilibria(r) == []

    def test_user_payoffs(self):
        tables = torch.rand(3, 3, 3)
        env = SequentialBimatrixEnv(1, grid_size=3, payoffs=list(tables), start_position=(2, 0))
        env.reset()
        out = _step(env, [[DOWN, UP]])
        assert out["agents", "reward"].flatten().tolist() == pytest.approx(tables[1:, 1, 1].tolist())
        assert out["planner", "reward"].item() == pytest.approx(tables[0, 1, 1].item())


class TestDynamics:
    def test_moves_and_clipping(self):
        env = SequentialBimatrixEnv(1, start_position=(0, 3))
        env.reset()
        _step(env, [[DOWN, UP]])  # both clipped at the edges
        assert env.position.tolist() == [[0, 3]]
        _step(env, [[UP, DOWN]])
        assert env.position.tolist() == [[1, 2]]
        out = _step(env, [[UP, STAY]])
        assert env.position.tolist() == [[2, 2]]
        expected = dilemma_payoffs(4)[:, 2, 2]
        assert out["agents", "reward"].flatten().tolist() == pytest.approx(expected[1:].tolist())
        assert out["planner", "reward"].item() == pytest.approx(expected[0].item())

    def test_joint_and_own_observations(self):
        joint = SequentialBimatrixEnv(1, start_position=(1, 2), agent_id=False, time_obs=True, max_steps=4)
        obs = joint.reset()["agents", "observation"][0]
        assert obs[:, 1 * 4 + 2].tolist() == [1.0, 1.0] and obs[:, :16].sum().item() == 2
        out = _step(joint, [[STAY, STAY]])
        assert out["agents", "observation"][0, :, -1].tolist() == [0.25, 0.25]
        own = SequentialBimatrixEnv(1, start_position=(1, 2), observe="own")
        obs = own.reset()["agents", "observation"][0]
        assert obs[0, :4].tolist() == [0, 1, 0, 0] and obs[1, :4].tolist() == [0, 0, 1, 0]
        assert obs[:, 4:].tolist() == [[1, 0], [0, 1]]  # agent ids

    def test_officers(self):
        env = SequentialBimatrixEnv(1, planner="officers", start_position=(0, 0))
        env.reset()
        r_p = dilemma_payoffs(4)[0, 0, 0].item()
        out = _step(env, [[STAY, STAY]], [[4]])  # +2 officers
        a = 2 / 12
        assert out["planner", "reward"].item() == pytest.approx(r_p * (1 + 3 * a) - a**2)
        assert out["planner", "observation"][0, 0, 16 + 2].item() == 1.0
        for _ in range(10):
            _step(env, [[STAY, STAY]], [[4]])
        assert env.officers.item() == 12  # clipped at the cap
        for _ in range(10):
            _step(env, [[STAY, STAY]], [[0]])  # -2 officers
        assert env.officers.item() == 0

    def test_truncation(self):
        env = SequentialBimatrixEnv(3, max_steps=5)
        rollout = env.rollout(12, break_when_any_done=False)
        truncated = rollout["next", "truncated"].squeeze(-1)
        assert truncated[:, 4].all() and truncated[:, 9].all()
        assert truncated.sum() == 3 * 2
        assert not rollout["next", "terminated"].any()
        assert (rollout["next", "done"] == rollout["next", "truncated"]).all()

    def test_nmatrix_payoff_lookup(self):
        env = NMatrixGameEnv(1, n_agents=2, grid_size=3, start_position=(0, 1, 2))
        env.reset()
        td = TensorDict(
            {
                "agents": TensorDict({"action": torch.tensor([[UP, DOWN]])}, [1, 2]),
                "planner": TensorDict({"action": torch.tensor([[STAY]])}, [1, 1]),
            },
            [1],
        )
        out = env.step(td)["next"]
        assert env.position.tolist() == [[1, 0, 2]]
        tables = env.payoff_table.T.reshape(3, 3, 3, 3)
        assert out["agents", "reward"].flatten().tolist() == pytest.approx(tables[1:, 1, 0, 2].tolist())
        assert out["planner", "reward"].item() == pytest.approx(tables[0, 1, 0, 2].item())


class TestResetAndSeeding:
    def test_seeded_determinism(self):
        def run(seed):
            env = SequentialBimatrixEnv(16, planner="officers", max_steps=10)
            env.set_seed(seed)
            torch.manual_seed(seed)
            return env.rollout(25, break_when_any_done=False)

        a, b, c = run(3), run(3), run(4)
        assert (a == b).all()
        assert not (a["agents", "observation"] == c["agents", "observation"]).all()

    def test_uniform_start(self):
        env = SequentialBimatrixEnv(20000)
        env.set_seed(0)
        env.reset()
        counts = torch.bincount(env._flat_position(), minlength=16).float()
        assert (counts / counts.sum() - 1 / 16).abs().max() < 0.01

    @pytest.mark.parametrize("env_cls", [SequentialBimatrixEnv, NMatrixGameEnv])
    def test_partial_reset_only_touches_masked_envs(self, env_cls):
        env = env_cls(64, max_steps=50)
        env.set_seed(1)
        td = env.reset()
        for _ in range(5):
            td = env.rand_step(td)
            td = td["next"]
        before_pos, before_t = env.position.clone(), env.step_count.clone()
        mask = torch.zeros(64, 1, dtype=torch.bool)
        mask[::3] = True
        # TorchRL semantics: entries of the environments not reset come from the input
        out = env.reset(td.clone().set("_reset", mask))
        keep = ~mask.squeeze(-1)
        assert (env.position[keep] == before_pos[keep]).all()
        assert (env.step_count[keep] == before_t[keep]).all()
        assert (env.step_count[mask.squeeze(-1)] == 0).all()
        obs_before = td["agents", "observation"]
        assert (out["agents", "observation"][keep] == obs_before[keep]).all()

    def test_officers_reset(self):
        env = SequentialBimatrixEnv(2, planner="officers")
        env.reset()
        _step(env, [[0, 0], [0, 0]], [[4], [4]])
        env.reset(TensorDict({"_reset": torch.tensor([[True], [False]])}, [2]))
        assert env.officers.flatten().tolist() == [0, 2]


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs,name",
        [
            (dict(grid_size=1), "grid_size"),
            (dict(grid_size=2.5), "grid_size"),
            (dict(batch_size=0), "batch_size"),
            (dict(batch_size=(2, -1)), "batch_size"),
            (dict(payoffs="prisoners"), "payoffs"),
            (dict(payoffs=[torch.rand(3, 3)] * 3), "payoffs"),
            (dict(payoffs=[torch.rand(4, 4), torch.rand(4, 4), torch.full((4, 4), float("nan"))]), "payoffs"),
            (dict(planner="active"), "planner"),
            (dict(observe="all"), "observe"),
            (dict(max_steps=0), "max_steps"),
            (dict(start_position=(0, 4)), "start_position"),
            (dict(officer_weight=float("inf")), "officer_weight"),
            (dict(max_officers=0), "max_officers"),
            (dict(batch_size=2.5), r"batch_size must be a positive int .* got 2.5"),
            (dict(batch_size="4"), r"batch_size must be a positive int .* got '4'"),
            (dict(officer_weight="x"), r"officer_weight must be a finite number, got 'x' \(str\)"),
            (dict(agent_id="no"), r"agent_id must be a bool \(True or False\), got 'no'"),
            (dict(time_obs=1), r"time_obs must be a bool"),
        ],
    )
    def test_bimatrix(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            SequentialBimatrixEnv(**kwargs)

    @pytest.mark.parametrize(
        "kwargs,name",
        [
            (dict(n_agents=0), "n_agents"),
            (dict(grid_size=1), "grid_size"),
            (dict(batch_size=-3), "batch_size"),
            (dict(n_agents=1, grid_size=2, payoffs=torch.zeros(2, 2, 3)), "payoffs"),
            (dict(n_agents=1, grid_size=2, payoffs=torch.full((2, 2, 2), float("inf"))), "payoffs"),
            (dict(payoff_seed=-1), r"payoff_seed must be an int in \[0, "),
            (dict(payoff_seed=2**70), r"payoff_seed must be an int in \[0, "),
            (dict(agent_id="no"), r"agent_id must be a bool"),
        ],
    )
    def test_nmatrix(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            NMatrixGameEnv(**kwargs)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
