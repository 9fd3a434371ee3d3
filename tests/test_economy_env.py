"""EconomyEnv: specs, tiers, tax timing, planner semantics, map and market rules, resets,
devices and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torchrl.envs.utils import check_env_specs
from torchrl_ermas.envs.economy import (
    TIERS,
    EconomyEnv,
    FixedRatePlanner,
    FreeMarketPlanner,
    SaezPlanner,
    USFederalPlanner,
)
from torchrl_ermas.envs.economy.auction import DoubleAuction

SKILLS = (1.133, 1.327, 1.647, 2.225)


def _us_tax(z: float) -> float:
    cut = (0, 9.7, 39.475, 84.2, 160.725, 204.1, 510.3, math.inf)
    rates = (0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37)
    return sum(r * min(max(z - lo, 0), hi - lo) for r, lo, hi in zip(rates, cut, cut[1:]))


def _step(env, td, agent_action, planner=None):
    td = td.clone()
    td["agents", "action"] = torch.as_tensor(agent_action).expand(*env.batch_size, env.n_agents).clone()
    if planner is not None:
        td = planner(td)
    else:
        td = env.rand_action(td.exclude(("agents", "action"))).update({("agents", "action"): td["agents", "action"]})
    out = env.step(td)
    return out, env.step_mdp(out)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("planner_action", ["discrete", "rates"])
def test_check_env_specs(tier, planner_action):
    env = EconomyEnv(3, tier=tier, planner_action=planner_action, episode_length=20, period=10, seed=0)
    check_env_specs(env)
    td = env.rollout(4)
    assert td["agents", "observation"].shape[:3] == (3, 4, 4)
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["next", "agents", "reward"].shape == (3, 4, 4, 1)
    assert td["next", "planner", "reward"].shape == (3, 4, 1, 1)
    assert td["planner", "action"].shape == (3, 4, 1, 7)
    assert td["next", "done"].shape == (3, 4, 1)


class TestLabourTier:
    def test_income_taxes_and_lump_sum_by_hand(self):
        env = EconomyEnv(2, tier="labour", planner_action="rates", episode_length=20, period=10, seed=0)
        td = env.reset()
        planner = USFederalPlanner()
        rank = td["agents", "skill_rank"].squeeze(-1)
        for _ in range(10):
            out, td = _step(env, td, 10, planner)
        gross = torch.tensor(SKILLS)[rank] * 100
        for e in range(2):
            taxes = [_us_tax(z) for z in gross[e].tolist()]
            lump = sum(taxes) / 4
            expected = [z - t + lump for z, t in zip(gross[e].tolist(), taxes)]
            assert out["next", "agents", "coin"][e].squeeze(-1).tolist() == pytest.approx(expected, rel=1e-5)
            assert out["next", "tax_revenue"][e].item() == pytest.approx(sum(taxes), rel=1e-5)
            assert out["next", "planner", "income"][e, 0].tolist() == pytest.approx(gross[e].tolist(), rel=1e-6)
        assert out["next", "planner", "taxes_enacted"].all()
        assert out["next", "planner", "period_start"].all()

    def test_rewards_telescope_to_utility_and_swf(self):
        eta = torch.tensor([0.11, 0.23, 0.35, 1.0])
        env = EconomyEnv(2, tier="labour", planner_action="rates", eta=eta, episode_length=20, period=10, seed=1)
        td = env.reset()
        rewards, planner_rewards = 0, 0
        for t in range(20):
            out, td = _step(env, td, t % 11, USFederalPlanner())
            rewards = rewards + out["next", "agents", "reward"].squeeze(-1)
            planner_rewards = planner_rewards + out["next", "planner", "reward"].reshape(2)
        coin = out["next", "agents", "coin"].squeeze(-1)
        labour = out["next", "agents", "labour"].squeeze(-1)
        assert labour[0, 0].item() == sum(t % 11 for t in range(20))
        u = torch.where(eta == 1, coin.clamp_min(1).log(), (coin.pow(1 - eta) - 1) / (1 - eta).clamp_min(1e-9))
        u = u - 0.21 * labour
        u0 = torch.where(eta == 1, torch.zeros(4), -1 / (1 - eta).clamp_min(1e-9))
        torch.testing.assert_close(rewards, u - u0, rtol=1e-4, atol=1e-3)
        x = coin
        eq = 1 - (x[:, :, None] - x[:, None, :]).abs().sum((1, 2)) / (8 * x.sum(-1)) / 0.75
        torch.testing.assert_close(planner_rewards, eq * x.mean(-1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out["next", "equality"].squeeze(-1), eq, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["next", "productivity"].squeeze(-1), x.sum(-1), rtol=1e-6, atol=1e-4)
        assert out["next", "truncated"].all() and not out["next", "terminated"].any()

    def test_discrete_planner_keep_previous_and_masks(self):
        env = EconomyEnv(1, tier="labour", episode_length=10, period=5, seed=0)
        td = env.reset()
        mask = td["planner", "action_mask"]
        assert mask.shape == (1, 1, 7, 22) and mask.all()
        rates_slice = slice(4 + 4, 4 + 4 + 7)

        def step(planner_action):
            nonlocal td
            td = td.clone()
            td["agents", "action"] = torch.full((1, 4), 10)
            td["planner", "action"] = torch.tensor(planner_action).view(1, 1, 7)
            out = env.step(td)
            td = env.step_mdp(out)
            return td["planner", "observation"][0, 0, rates_slice]

        assert step([3] * 7).tolist() == pytest.approx([0.1] * 7)
        # masked to "keep" off the period start; other actions are ignored there
        assert td["planner", "action_mask"][..., 1:].sum() == 0 and td["planner", "action_mask"][..., 0].all()
        assert step([21] * 7).tolist() == pytest.approx([0.1] * 7)
        for _ in range(3):
            step([0] * 7)
        assert td["planner", "action_mask"].all()  # next step starts period 2
        assert step([0, 1, 21, 0, 5, 0, 2]).tolist() == pytest.approx([0.1, 0.0, 1.0, 0.1, 0.2, 0.1, 0.05])

    def test_partial_reset(self):
        env = EconomyEnv(3, tier="labour", episode_length=20, period=10, seed=0)
        td = env.reset()
        for _ in range(3):
            _, td = _step(env, td, 5)
        coin_before = td["agents", "coin"].clone()
        td.set("_reset", torch.tensor([[True], [False], [True]]))
        td = env.reset(td)
        time = td["agents", "observation"][:, 0, 1 + 3 + 4 + 7 + 1]
        assert time.tolist() == pytest.approx([0.0, 3 / 20, 0.0])
        assert (td["agents", "coin"][[0, 2]] == 0).all()
        torch.testing.assert_close(td["agents", "coin"][1], coin_before[1])

    def test_saez_planner_warms_up_then_shares_a_schedule(self):
        env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=40, period=10, seed=0)
        planner = SaezPlanner(fixed_elasticity=3.0, buffer_size=16)
        td = env.reset()
        warm = planner(env.rand_action(td))["planner", "action"]
        assert not torch.allclose(warm[0], warm[1])  # i.i.d. warm-up draws per env
        for t in range(40):
            td = planner(env.rand_action(td))
            if t == 30:
                assert planner.warmed_up
                rates = td["planner", "action"]
                torch.testing.assert_close(rates, rates[:1].expand_as(rates))
                assert ((rates >= 0) & (rates <= 1)).all()
            _, td = env.step_and_maybe_reset(td)
        assert planner.n_samples == 48  # periods ending at steps 10, 20, 30 were observed

    def test_the_tax_day_that_ends_an_episode_reaches_a_planner_acting_after_the_reset(self):
        env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=20, period=10, seed=0)
        planner = SaezPlanner(fixed_elasticity=3.0, buffer_size=100)
        td = env.reset()
        assert not td["planner", "taxes_enacted"].any()  # a fresh start reports no tax day
        for _ in range(2 * 20):
            out, td = env.step_and_maybe_reset(planner(env.rand_action(td)))
        last = out["next", "planner"]  # the terminal output of the second episode
        assert td["planner", "taxes_enacted"].all() and td["planner", "period_start"].all()
        torch.testing.assert_close(td["planner", "income"], last["income"])
        torch.testing.assert_close(td["planner", "marginal_rate"], last["marginal_rate"])
        assert (td["agents", "coin"] == 0).all()  # the reset itself is complete
        planner(td)
        assert planner.n_samples == 4 * 4 * 4  # 2 episodes x 2 periods x 4 envs x 4 agents
        again = env.reset()  # a collector that resets at each batch resets once more
        assert again["planner", "taxes_enacted"].all()
        torch.testing.assert_close(again["planner", "income"], last["income"])
        _, td = env.step_and_maybe_reset(env.rand_action(again))
        assert not td["planner", "taxes_enacted"].any()  # until the first step only
        assert env.completed_episodes.tolist() == [2] * 4


class TestCurricula:
    """The AI Economist's labour-cost warm-up and tax annealing, counted in each
    environment's completed episodes."""

    @staticmethod
    def _episode(env, td, hours, planner):
        total = 0
        for _ in range(env.episode_length):
            out, td = _step(env, td, hours, planner)
            total = total + out["next", "agents", "reward"].squeeze(-1)
        return out, td, total

    def test_energy_warmup_weighs_the_labour_cost_per_completed_episode(self):
        env = EconomyEnv(2, tier="labour", planner_action="rates", energy_warmup=2.0, episode_length=10, period=5)
        td = env.reset()
        assert env.energy_weight.tolist() == [0.0, 0.0]
        for k in range(3):
            out, td, total = self._episode(env, td, 4, FreeMarketPlanner())
            coin, labour = out["next", "agents", "coin"].squeeze(-1), out["next", "agents", "labour"].squeeze(-1)
            weight = 1 - math.exp(-k / 2.0)
            utility = (coin.pow(0.77) - 1) / 0.77 - weight * 0.21 * labour
            torch.testing.assert_close(total, utility + 1 / 0.77, rtol=1e-4, atol=1e-3)
            td = env.reset(td.set("_reset", torch.ones(2, 1, dtype=torch.bool)))
        assert env.completed_episodes.tolist() == [3, 3]
        assert env.energy_weight.tolist() == pytest.approx([1 - math.exp(-1.5)] * 2)

    def test_only_completed_episodes_count_and_the_state_dict_carries_them(self):
        env = EconomyEnv(2, tier="labour", energy_warmup=5.0, episode_length=10, period=5, seed=0)
        td = env.reset()
        for _ in range(4):
            _, td = _step(env, td, 1)
        td = env.reset(td.set("_reset", torch.tensor([[True], [False]])))  # a cut episode is no completion
        assert env.completed_episodes.tolist() == [0, 0]
        for _ in range(6):
            _, td = _step(env, td, 1)
        td = env.reset(td.set("_reset", torch.tensor([[False], [True]])))  # env 1 has finished its episode
        assert env.completed_episodes.tolist() == [0, 1]
        fresh = EconomyEnv(2, tier="labour", energy_warmup=5.0, episode_length=10, period=5)
        fresh.load_state_dict(env.state_dict())
        assert fresh.completed_episodes.tolist() == [0, 1]

    def test_tax_annealing_caps_discrete_choices_and_rates(self):
        env = EconomyEnv(1, tier="labour", tax_annealing=(-2, 0.1), episode_length=10, period=5, seed=0)
        td = env.reset()  # cap 0.1 * (0 + 2) = 0.2: choices 1..5 set rates 0 .. 0.2
        mask = td["planner", "action_mask"][0, 0]
        assert mask[:, :6].all() and not mask[:, 6:].any()
        rates_env = EconomyEnv(
            1, tier="labour", planner_action="rates", tax_annealing=(-2, 0.1), episode_length=10, period=5
        )
        td = rates_env.reset()
        for _ in range(6):  # a flat 0.9 during the first period, read back at the next period start
            out, td = _step(rates_env, td, 10, FixedRatePlanner([0.9] * 7))
        assert out["next", "planner", "marginal_rate"].flatten().tolist() == pytest.approx([0.2] * 4)


class TestMapTiers:
    def test_gather_then_build_by_hand(self):
        env = EconomyEnv(1, tier="gather_build", planner_action="rates", episode_length=100, period=50, seed=3)
        td = env.reset()
        rank = td["agents", "skill_rank"][0, :, 0]
        me = int((rank == 2).nonzero())  # starts at (0, 0) on a wood source
        planner = FreeMarketPlanner()
        layout = env.actions
        noop, build, up, down = layout.noop, layout.build, layout.moves + 2, layout.moves + 3
        for a in (noop, down, down, down, up):
            action = torch.zeros(1, 4, dtype=torch.long)
            action[0, me] = a
            out, td = _step(env, td, action, planner)
        inv = td["agents", "observation"][0, me]
        stone, wood = (inv[-4:-2] * 100).round().tolist()
        assert stone >= 1 and wood >= 2
        assert td["agents", "action_mask"][0, me, build]
        action = torch.zeros(1, 4, dtype=torch.long)
        action[0, me] = build
        out, td = _step(env, td, action, planner)
        assert td["agents", "builds"][0, me].item() == 1
        assert td["builds"].item() == 1 and td["labour"].item() == pytest.approx(td["agents", "labour"].mean().item())
        assert td["agents", "coin"][0, me].item() == pytest.approx(16.47)
        # 3 collects, 4 moves, 1 build
        assert td["agents", "labour"][0, me].item() == pytest.approx(3 + 4 + 10)
        assert not td["agents", "action_mask"][0, me, build]  # own house blocks building
        view = td["agents", "world_map"][0, me]
        assert view[2, 5, 5] == 1 and view[7, 5, 5] == 1 and view[8, 5, 5] == 1  # house, owner, self

    def test_move_masks_at_corners(self):
        env = EconomyEnv(1, tier="gather_build", episode_length=100, period=50, seed=0)
        td = env.reset()
        rank = td["agents", "skill_rank"][0, :, 0]
        mask = td["agents", "action_mask"][0]
        # rank 0 starts at (0, 24): right and up leave the map, left and down are free
        moves = env.actions.moves
        assert mask[int((rank == 0).nonzero()), moves:].tolist() == [True, False, False, True]
        # rank 3 at (24, 24): only left and up
        assert mask[int((rank == 3).nonzero()), moves:].tolist() == [True, False, True, False]

    def test_world_map_view_edges(self):
        env = EconomyEnv(1, tier="gather_trade_build", episode_length=100, period=50, seed=0)
        td = env.reset()
        rank = td["agents", "skill_rank"][0, :, 0]
        view = td["agents", "world_map"][0, int((rank == 2).nonzero())]  # at (0, 0)
        assert view.shape == (9, 11, 11)
        assert view[6, :5].sum() == 0 and view[6, 5:, 5:].all()  # in-bounds channel
        assert view[1, 5, 5] == 1 and view[5, 5, 5] == 1  # wood unit on a wood source


class TestDoubleAuction:
    def _setup(self):
        auction = DoubleAuction(n_agents=4)
        book = auction.empty_book(1)
        inventory = torch.zeros(1, 4, 3)
        inventory[0, :, 0] = 10.0
        inventory[0, :, 1:] = 2.0
        return auction, book, inventory, torch.zeros(1, 4, 3), torch.zeros(1, 4)

    def _order(self, auction, book, inv, esc, lab, orders):
        resource = torch.full((1, 4), -1)
        is_bid = torch.zeros(1, 4, dtype=torch.bool)
        price = torch.zeros(1, 4, dtype=torch.long)
        for agent, (r, bid, p) in orders.items():
            resource[0, agent], is_bid[0, agent], price[0, agent] = r, bid, p
        return auction.step(book, resource, is_bid, price, inv, esc, lab)

    def test_older_ask_sets_the_price(self):
        auction, book, inv, esc, lab = self._setup()
        assert self._order(auction, book, inv, esc, lab, {1: (0, False, 3)}).item() == 0
        assert esc[0, 1, 1] == 1 and inv[0, 1, 1] == 1 and lab[0, 1] == 0.25
        assert self._order(auction, book, inv, esc, lab, {0: (0, True, 5)}).item() == 1
        assert inv[0, 0].tolist() == [7.0, 3.0, 2.0]  # paid 3, 2 back from escrow
        assert inv[0, 1].tolist() == [13.0, 1.0, 2.0]
        assert esc.abs().sum() == 0 and not book["active"].any()
        assert book["price_history"][0, 0, 1, 3].item() == 1.0

    def test_older_bid_sets_the_price_and_no_self_trade(self):
        auction, book, inv, esc, lab = self._setup()
        self._order(auction, book, inv, esc, lab, {0: (1, True, 6), 3: (1, True, 9)})
        # agent 3's own ask cannot fill its bid; it fills agent 3's... no: best bid is 9 (agent 3)
        assert self._order(auction, book, inv, esc, lab, {3: (1, False, 4)}).item() == 1
        assert inv[0, 0].tolist() == [10.0 - 6.0, 2.0, 3.0]  # agent 0 bought at its bid (older)
        assert inv[0, 3, 0].item() == 10.0 - 9.0 + 6.0  # agent 3's own bid still in escrow
        assert book["active"].sum() == 1

    def test_priority_price_then_age_then_index(self):
        auction, book, inv, esc, lab = self._setup()
        self._order(auction, book, inv, esc, lab, {2: (0, False, 2)})
        self._order(auction, book, inv, esc, lab, {1: (0, False, 2), 3: (0, False, 1)})
        # bid 5 by agent 0: cheapest ask (agent 3 at 1) first, then the older ask at 2
        self._order(auction, book, inv, esc, lab, {0: (0, True, 5)})
        assert inv[0, 3, 0].item() == 11.0 and inv[0, 0, 1].item() == 3.0
        self._order(auction, book, inv, esc, lab, {0: (0, True, 5)})
        assert inv[0, 2, 0].item() == 12.0 and inv[0, 1, 0].item() == 10.0

    def test_expiry_refunds(self):
        auction, book, inv, esc, lab = self._setup()
        self._order(auction, book, inv, esc, lab, {0: (0, True, 4), 1: (1, False, 9)})
        for _ in range(49):  # age 1 after the creation step, expiry once age > 50
            self._order(auction, book, inv, esc, lab, {})
        assert book["active"].sum() == 2
        self._order(auction, book, inv, esc, lab, {})
        assert not book["active"].any() and esc.abs().sum() == 0
        assert inv[0, 0].tolist() == [10.0, 2.0, 2.0] and inv[0, 1].tolist() == [10.0, 2.0, 2.0]

    def test_order_limit_and_affordability(self):
        auction, book, inv, esc, lab = self._setup()
        for _ in range(5):
            self._order(auction, book, inv, esc, lab, {0: (0, True, 1)})
        bids, asks = auction.masks(book, inv)
        assert not bids[0, 0, 0].any() and not asks[0, 0, 0]
        assert bids[0, 0, 1].tolist() == [True] * 6 + [False] * 5  # 5 coin left for wood bids
        assert self._order(auction, book, inv, esc, lab, {0: (0, True, 1)}).item() == 0
        assert book["active"][0, 0, 0].sum() == 5 and lab[0, 0].item() == 1.25
        inv[0, 1, 0] = 3.0
        bids, _ = auction.masks(book, inv)
        assert bids[0, 1, 0].tolist() == [True] * 4 + [False] * 7


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"map_name": "nowhere"}, "unknown map 'nowhere'; accepted values"),
            ({"eta": [0.23, 0.23]}, r"eta must be a float or have shape \[n_agents\]"),
            ({"eta": torch.full((3, 4), 0.2)}, r"eta must be a float or have shape"),
            ({"eta": 0.0}, r"eta must lie in \(0, 1\]"),
            ({"eta": [0.2, -0.1, 0.3, 0.2]}, r"eta must lie in \(0, 1\]"),
            ({"bracket_cutoffs": [0, 50, 40]}, "strictly increasing"),
            ({"period": 30}, "period must be a positive divisor of episode_length"),
            ({"tier": "barter"}, "tier must be one of"),
            ({"planner_action": "continuous"}, r"planner_action must be one of \('discrete', 'rates'\)"),
            ({"n_agents": 5}, "n_agents must be 4"),
            ({"energy_cost": float("nan")}, r"energy_cost must be a finite number >= 0, got nan"),
            ({"energy_cost": -1.0}, r"energy_cost must be a finite number >= 0, got -1.0"),
            ({"starting_coin": float("nan")}, r"starting_coin must be a finite number >= 0"),
            ({"starting_coin": float("inf")}, r"starting_coin must be a finite number >= 0"),
            ({"max_hours": 2.5}, r"max_hours must be an int >= 1, got 2.5 \(float\)"),
            ({"bracket_cutoffs": [0, float("nan"), 40]}, r"bracket cutoffs\[1\] must be a finite number, got nan"),
            ({"bracket_cutoffs": [0, 40, float("inf")]}, r"bracket cutoffs\[2\] must be a finite number"),
            ({"bracket_cutoffs": [0, "a"]}, r"bracket cutoffs\[1\] must be a finite number, got 'a' \(str\)"),
            ({"seed": -1}, r"seed must be None or an int in \[0, "),
            ({"spatial_observation": "yes"}, "spatial_observation must be a bool"),
            ({"energy_warmup": -1.0}, r"energy_warmup must be a finite number >= 0, got -1.0"),
            ({"tax_annealing": (0.0, 0.0)}, r"tax_annealing slope must be a finite number > 0, got 0.0"),
            ({"tax_annealing": (0.0,)}, r"tax_annealing must be \(offset, slope\) or None"),
        ],
    )
    def test_constructor(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            EconomyEnv(2, **{"episode_length": 100, "period": 10, **kwargs})

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"fixed_elasticity": float("inf")}, r"fixed_elasticity must be a finite number >= 0"),
            ({"fixed_elasticity": -1.0}, r"fixed_elasticity must be a finite number >= 0"),
            ({"buffer_size": 2.5}, r"buffer_size must be an int >= 1, got 2.5 \(float\)"),
            ({"buffer_size": 0}, r"buffer_size must be an int >= 1"),
            ({"pareto_weight": "equal"}, r"pareto_weight must be one of \('inverse_income', 'uniform'\)"),
            ({"cutoffs": [0.0, float("nan")]}, r"bracket cutoffs\[1\] must be a finite number"),
        ],
    )
    def test_saez_planner(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            SaezPlanner(**kwargs)

    @pytest.mark.parametrize("batch_size", [2.5, 0, "2", True, (2, 3), (), [0]])
    def test_batch_size(self, batch_size):
        with pytest.raises(ValueError, match=r"batch_size must be a positive int or a non-empty sequence of at most 1"):
            EconomyEnv(batch_size, episode_length=100, period=10)

    @pytest.mark.parametrize("batch_size", [3, (3,), torch.Size([3])])
    def test_batch_size_forms(self, batch_size):
        env = EconomyEnv(batch_size, tier="labour", episode_length=20, period=10)
        assert env.batch_size == torch.Size([3]) and env.rollout(2)["next", "agents", "reward"].shape == (3, 2, 4, 1)

    @pytest.mark.parametrize("rates,match", [([0.1] * 6, "one rate per bracket"), ([0.1] * 6 + [1.5], r"\[0, 1\]")])
    def test_planner_rates(self, rates, match):
        with pytest.raises(ValueError, match=match):
            FixedRatePlanner(rates)

    def test_out_of_range_rates_action(self):
        env = EconomyEnv(2, tier="labour", planner_action="rates", episode_length=20, period=10)
        td = env.rand_action(env.reset())
        td["planner", "action"] = torch.full((2, 1, 7), 1.5)
        with pytest.raises(ValueError, match=r"rates must lie in \[0, 1\]"):
            env.step(td)

    def test_set_eta(self):
        env = EconomyEnv(2, tier="labour", episode_length=20, period=10)
        env.set_eta(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]))
        assert env.eta[1, 3].item() == pytest.approx(0.8)
        with pytest.raises(ValueError, match="eta must lie"):
            env.set_eta(1.5)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_device_end_to_end(device):
    env = EconomyEnv(2, tier="gather_trade_build", planner_action="rates", episode_length=20, period=10, device=device)
    planner = SaezPlanner(buffer_size=4).to(device)
    td = env.reset()
    for _ in range(12):
        td = planner(env.rand_action(td))
        out, td = env.step_and_maybe_reset(td)
    for value in out.values(True, True):
        assert value.device.type == device


def test_free_market_is_untaxed_and_us_federal_collects():
    for planner, taxed in ((FreeMarketPlanner(), False), (USFederalPlanner(), True)):
        env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=20, period=10, seed=0)
        td = env.reset()
        for _ in range(20):
            out, td = _step(env, td, 10, planner)
        assert (out["next", "tax_revenue"] > 0).all() == taxed


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
