"""Tests for :class:`torchrl_ermas.objectives.LagrangeMultiplier`."""

from __future__ import annotations

import math

import pytest
import torch

from torchrl_ermas.objectives import LagrangeMultiplier
from torchrl_ermas.schedule import anneal_share
from torchrl_ermas.training import multiplier_settling

GA = "gradient_ascent"


def _sgd_step(lagrange: LagrangeMultiplier, regret: torch.Tensor, epsilon: float) -> torch.Tensor:
    optimizer = torch.optim.SGD(lagrange.parameters(), lr=lagrange.lr)
    optimizer.zero_grad()
    lagrange(regret, epsilon).backward()
    optimizer.step()
    lagrange.project_()
    return lagrange.value


class TestLagrangeMultiplier:
    def test_defaults(self):
        lagrange = LagrangeMultiplier(3)
        torch.testing.assert_close(lagrange.value, torch.full((3,), 1.0))
        assert lagrange.lr == 0.01
        assert lagrange.rule == "nupi"
        assert lagrange.max_value == 100.0
        assert not lagrange.frozen
        assert isinstance(lagrange.multiplier, torch.nn.Parameter)
        assert lagrange.multiplier.shape == (3,)
        assert not hasattr(lagrange, "device")

    def test_value_is_detached_snapshot(self):
        lagrange = LagrangeMultiplier(2, init=1.0)
        value = lagrange.value
        assert not value.requires_grad
        lagrange.update(torch.tensor([10.0, 10.0]), epsilon=0.0)
        torch.testing.assert_close(value, torch.ones(2))

    def test_update_hand_computed(self):
        lagrange = LagrangeMultiplier(3, init=8.0, lr=0.1, rule=GA)
        new = lagrange.update(torch.tensor([2.0, 5.0, -1.0]), epsilon=1.0)
        expected = torch.tensor([8.0 + 0.1 * 1.0, 8.0 + 0.1 * 4.0, 8.0 - 0.1 * 2.0])
        torch.testing.assert_close(new, expected)
        torch.testing.assert_close(lagrange.value, expected)

    def test_update_per_agent_epsilon_and_column_regret(self):
        lagrange = LagrangeMultiplier(2, init=1.0, lr=1.0, rule=GA)
        new = lagrange.update(torch.tensor([[3.0], [3.0]]), torch.tensor([1.0, 2.0]))
        torch.testing.assert_close(new, torch.tensor([3.0, 2.0]))

    def test_projection_at_zero_and_max(self):
        lagrange = LagrangeMultiplier(2, init=1.0, lr=1.0, max_value=5.0, rule=GA)
        new = lagrange.update(torch.tensor([-10.0, 10.0]), epsilon=0.0)
        torch.testing.assert_close(new, torch.tensor([0.0, 5.0]))

    @pytest.mark.parametrize("epsilon", [-2.0, 0.5])
    def test_optimizer_path_matches_update(self, epsilon):
        regret = torch.tensor([0.3, -4.0, 2.5, 400.0])
        by_update = LagrangeMultiplier(4, init=1.0, lr=0.05, max_value=10.0, rule=GA)
        by_optimizer = LagrangeMultiplier(4, init=1.0, lr=0.05, max_value=10.0)
        for _ in range(3):
            expected = by_update.update(regret, epsilon)
            torch.testing.assert_close(_sgd_step(by_optimizer, regret, epsilon), expected)

    def test_forward_loss(self):
        lagrange = LagrangeMultiplier(2, init=2.0)
        regret = torch.tensor([1.0, 3.0], requires_grad=True)
        loss = lagrange(regret, 0.5)
        assert loss.shape == ()
        torch.testing.assert_close(loss, -(2.0 * 0.5 + 2.0 * 2.5) * torch.ones(()))
        loss.backward()
        torch.testing.assert_close(lagrange.multiplier.grad, -torch.tensor([0.5, 2.5]))
        assert regret.grad is None

    def test_frozen_update_is_noop(self):
        lagrange = LagrangeMultiplier(2, init=3.0, lr=1.0, frozen=True, rule=GA)
        assert lagrange.frozen
        new = lagrange.update(torch.tensor([10.0, -10.0]), epsilon=0.0)
        torch.testing.assert_close(new, torch.full((2,), 3.0))
        lagrange.unfreeze()
        assert not lagrange.frozen
        new = lagrange.update(torch.tensor([1.0, -1.0]), epsilon=0.0)
        torch.testing.assert_close(new, torch.tensor([4.0, 2.0]))

    def test_frozen_optimizer_path_is_noop(self):
        lagrange = LagrangeMultiplier(2, init=3.0, lr=1.0)
        lagrange.freeze()
        regret = torch.tensor([10.0, -4.0])
        # the loss keeps its value for logging, only its gradient is zero
        torch.testing.assert_close(lagrange(regret, 0.0), torch.tensor(-18.0))
        new = _sgd_step(lagrange, regret, 0.0)
        torch.testing.assert_close(lagrange.multiplier.grad, torch.zeros(2))
        torch.testing.assert_close(new, torch.full((2,), 3.0))

    def test_frozen_still_validates(self):
        lagrange = LagrangeMultiplier(2, frozen=True)
        with pytest.raises(ValueError, match="regret"):
            lagrange.update(torch.tensor([math.nan, 0.0]), epsilon=0.0)

    def test_state_dict_round_trip(self):
        source = LagrangeMultiplier(3, init=1.0, lr=1.0)
        source.update(torch.tensor([1.0, 2.0, 3.0]), epsilon=0.0)
        source.freeze()
        target = LagrangeMultiplier(3, lr=1.0)  # hyperparameters are not state
        target.load_state_dict(source.state_dict())
        torch.testing.assert_close(target.value, source.value)
        assert target.frozen
        controller = {"_updates", "_mean_ema", "_square_ema", "_xi", "_last_sign", "_sign_changes"}
        assert set(source.state_dict()) == {"multiplier", "_frozen"} | controller
        source.unfreeze(), target.unfreeze()  # the controller state travels too
        regret = torch.tensor([0.5, -2.0, 1.0])
        torch.testing.assert_close(target.update(regret, 0.0), source.update(regret, 0.0))

    @pytest.mark.parametrize(
        "kwargs, name",
        [
            ({"n_agents": 0}, "n_agents"),
            ({"n_agents": 2.0}, "n_agents"),
            ({"n_agents": 2, "lr": -0.1}, "lr"),
            ({"n_agents": 2, "max_value": 0.0}, "max_value"),
            ({"n_agents": 2, "init": -1.0}, "init"),
            ({"n_agents": 2, "init": 101.0}, "init"),
            ({"n_agents": 2, "init": math.nan}, "init"),
            ({"n_agents": 2, "lr": math.inf}, r"lr must be a finite number >= 0, got inf"),
            ({"n_agents": 2, "lr": math.nan}, r"lr must be a finite number"),
            ({"n_agents": 2, "max_value": math.inf}, r"max_value must be a finite number > 0, got inf"),
            ({"n_agents": 2, "init": "8"}, r"init must be a finite number.*got '8' \(str\)"),
            ({"n_agents": 2, "rule": "pid"}, r"rule must be one of \('nupi', 'gradient_ascent'\)"),
            ({"n_agents": 2, "kp": -1.0}, r"kp must be"),
            ({"n_agents": 2, "sign_change_decay": -1.0}, r"sign_change_decay must be"),
            ({"n_agents": 2, "sign_change_after": -1}, r"sign_change_after must be"),
            ({"n_agents": 2, "sign_change_after": 2.5}, r"sign_change_after must be"),
            ({"n_agents": 2, "nu": 1.0}, r"nu must be"),
            ({"n_agents": 2, "scale_decay": math.nan}, r"scale_decay must be"),
            ({"n_agents": 2, "noise_floor": 0.0}, r"noise_floor must be a finite number > 0"),
            ({"n_agents": 2, "frozen": "no"}, r"frozen must be a bool"),
            ({"n_agents": 2, "total_updates": 0}, r"total_updates must be"),
            ({"n_agents": 2, "total_updates": 2.5}, r"total_updates must be"),
            ({"n_agents": 2, "anneal_start": 1.5}, r"anneal_start must be"),
            ({"n_agents": 2, "anneal_start": -0.1}, r"anneal_start must be"),
        ],
    )
    def test_bad_constructor_args(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            LagrangeMultiplier(**kwargs)

    @pytest.mark.parametrize("method", ["update", "forward"])
    @pytest.mark.parametrize(
        "regret, epsilon, name",
        [
            (torch.tensor([math.nan, 0.0, 0.0]), 0.0, "regret"),
            (torch.tensor([math.inf, 0.0, 0.0]), 0.0, "regret"),
            (torch.zeros(2), 0.0, "regret"),
            (torch.zeros(1, 3), 0.0, "regret"),
            (torch.zeros(3, 3), 0.0, "regret"),
            (torch.zeros(3), torch.zeros(2), "epsilon"),
            (torch.zeros(3), math.nan, "epsilon"),
        ],
    )
    def test_bad_inputs(self, method, regret, epsilon, name):
        lagrange = LagrangeMultiplier(3)
        before = lagrange.value
        with pytest.raises(ValueError, match=name):
            getattr(lagrange, method)(regret, epsilon)
        torch.testing.assert_close(lagrange.value, before)


def _lagging_plant(
    lagrange: LagrangeMultiplier, epsilon: float, scale: float, seed: int, follow: float = 0.3, width: float = 0.5
):
    """Agents that lag behind lambda: their cooperation ``c`` moves ``follow`` of the way per
    update towards ``sigmoid((4/3 - lambda) / width)`` (the bimatrix game's switching
    multiplier), their regret is ``scale * (30 c + noise)``. Returns the final regret (in
    units of 1) and lambda's relative change over the last 20 % of the 40 updates."""
    generator = torch.Generator().manual_seed(seed)
    cooperation, trajectory = 0.0, []
    for _ in range(40):
        target = torch.sigmoid(torch.tensor((4 / 3 - lagrange.value.item()) / width)).item()
        cooperation += follow * (target - cooperation)
        noise = 1.5 * torch.randn((), generator=generator).item()
        lagrange.update(torch.tensor([scale * (30 * cooperation + noise)]), scale * epsilon)
        trajectory.append(lagrange.value.tolist())
    return 30 * cooperation, multiplier_settling(trajectory)[0]


@pytest.mark.parametrize("scale", [1.0, 1000.0])
@pytest.mark.parametrize("epsilon", [4.0, 11.0, 17.0, 23.0])
def test_nupi_tracks_epsilon_in_any_reward_scale(epsilon, scale):
    """One default setting lands the lagging agents' regret on epsilon and lets lambda
    settle, whatever the reward unit; the plain rule with a step size that suits one unit
    does not in another."""
    changes = []
    for seed in range(3):
        regret, change = _lagging_plant(LagrangeMultiplier(1), epsilon, scale, seed)
        assert abs(regret - epsilon) < 2.0, (seed, regret)
        changes.append(change)
    assert sum(changes) / len(changes) < 0.1 and max(changes) < 0.2, changes
    plain = [_lagging_plant(LagrangeMultiplier(1, rule=GA, lr=0.1), epsilon, scale, seed) for seed in range(3)]
    if scale > 1 and epsilon < 20:  # 0.1 lambda per unit of reward: far too large in milli-units
        assert max(abs(regret - epsilon) for regret, _ in plain) > 3.0


@pytest.mark.parametrize("violation", [-14.0, 0.5, 30.0])
def test_first_nupi_update_has_no_proportional_kick(violation):
    """The first violation is not a change of the proportional term (whose history starts
    there): it moves the planner's weight by ``lr * u`` only, at most ``lr * max_violation``
    (with a kick of ``kp * (1 - nu) * u`` on top, lambda fell from 1 to 0.61 at the first
    estimate of the Fig. 2 runs and the agents overshot into full cooperation)."""
    lagrange = LagrangeMultiplier(1)
    lagrange.update(torch.tensor([violation]), 0.0)
    moved = 0.5 - 1 / (1 + lagrange.value.item())
    assert moved == pytest.approx(lagrange.lr * lagrange.max_violation * math.copysign(1, violation), rel=1e-5)
    lagrange.update(torch.tensor([violation]), 0.0)  # a repeated violation keeps xi where it is
    assert 0.5 - 1 / (1 + lagrange.value.item()) == pytest.approx(2 * moved, rel=1e-4)


def _weights(lagrange: LagrangeMultiplier, violations: list[float]) -> list[float]:
    """The planner's weight ``1 / (1 + lambda)`` after each of ``violations``."""
    weights = []
    for violation in violations:
        lagrange.update(torch.tensor([violation]), 0.0)
        weights.append(1 / (1 + lagrange.value.item()))
    return weights


def test_sign_change_decay_shrinks_the_step_only_when_the_violation_flips():
    """Kesten's rule: a violation of one sign moves lambda as without the decay; once the
    violation flips sign, the k-th flip scales the step by ``1 / sqrt(1 + decay * k)``."""
    rising = [2.0, 3.0, 2.5, 4.0, 3.0]
    constant = {"sign_change_decay": 0.0}
    decaying = LagrangeMultiplier(1, sign_change_decay=2.0, sign_change_after=0)
    assert _weights(decaying, rising) == _weights(LagrangeMultiplier(1, **constant), rising)
    flipping = [2.0, -2.0] * 5
    decayed = LagrangeMultiplier(1, sign_change_decay=1.0, sign_change_after=0)
    decayed_steps = torch.tensor(_weights(decayed, flipping)).diff().abs()
    constant_steps = torch.tensor(_weights(LagrangeMultiplier(1, **constant), flipping)).diff().abs()
    flips = torch.arange(1, len(flipping), dtype=torch.float)
    torch.testing.assert_close(decayed_steps, constant_steps / (1 + flips).sqrt())
    assert decayed._sign_changes.item() == len(flipping) - 1


@pytest.mark.parametrize("after", [0, 4, 10])
def test_sign_flips_count_after_the_approach(after):
    """The flips of the first ``sign_change_after`` updates (the agents' overshoot on the
    approach) leave the step at ``lr``; the later ones shrink it."""
    flipping = [2.0, -2.0] * 8
    delayed = LagrangeMultiplier(1, sign_change_decay=2.0, sign_change_after=after)
    steps = torch.tensor(_weights(delayed, flipping)).diff().abs()
    constant_steps = torch.tensor(_weights(LagrangeMultiplier(1, sign_change_decay=0.0), flipping)).diff().abs()
    updates = torch.arange(2, len(flipping) + 1)  # the steps of the weights' diff; each flips
    counted = (updates - max(after, 1)).clamp_min(0).float()  # the first flip is at update 2
    torch.testing.assert_close(steps, constant_steps / (1 + 2.0 * counted).sqrt())
    assert delayed._sign_changes.item() == len(flipping) - max(after, 1)


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_annealed_step_lands_where_the_constant_step_cycles(scale):
    """Agents that follow lambda within one update and switch sharply around it: with a
    constant step the loop cycles (the violation is counted in units of its own spread, so
    the step does not shrink) and the last regret lands anywhere in the cycle; with the
    budget of 40 updates the step anneals over the last 40 % and the regret lands on
    epsilon with lambda settled, in any reward unit."""
    misses = []
    for epsilon in (4.0, 11.0, 17.0, 23.0):
        for seed in range(3):
            plant = {"epsilon": epsilon, "scale": scale, "seed": seed, "follow": 1.0, "width": 0.1}
            regret, change = _lagging_plant(LagrangeMultiplier(1, total_updates=40), **plant)
            assert abs(regret - epsilon) < 1.0 and change < 0.05, (epsilon, seed, regret, change)
            constant, _ = _lagging_plant(LagrangeMultiplier(1), **plant)
            misses.append(abs(constant - epsilon))
    assert max(misses) > 5.0, misses


def test_schedule_counts_updates_across_a_state_dict_and_refuses_one_past_the_budget():
    """The schedule's position is the update count, a buffer: a multiplier rebuilt from a
    state dict continues the decay, and an update past ``total_updates`` raises."""
    source = LagrangeMultiplier(1, lr=1.0, rule=GA, total_updates=4, anneal_start=0.5)
    steps = []
    for _ in range(2):
        before = source.value
        steps.append((source.update(torch.tensor([1.0]), 0.0) - before).item())
    target = LagrangeMultiplier(1, lr=1.0, rule=GA, total_updates=4, anneal_start=0.5)
    target.load_state_dict(source.state_dict())
    for _ in range(2):
        before = target.value
        steps.append((target.update(torch.tensor([1.0]), 0.0) - before).item())
    assert steps == [1.0, 1.0, 1.0, 0.5]
    with pytest.raises(RuntimeError, match="exceeds total_updates=4"):
        target.update(torch.tensor([1.0]), 0.0)
    constant = LagrangeMultiplier(1, lr=1.0, rule=GA, total_updates=4, anneal_start=1.0)
    assert [constant.update(torch.tensor([1.0]), 0.0).item() for _ in range(4)] == [2.0, 3.0, 4.0, 5.0]


def test_noise_floor_ignores_noise_level_violations_at_zero_epsilon():
    """At epsilon = 0 a Nash equilibrium's regret estimates are noise around 0: relative to
    a reference return of 35 they are below the noise floor and barely move lambda, while
    without a reference they are normalised into whole units."""
    noise = 0.2 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0)).abs()
    floored, unfloored = LagrangeMultiplier(2), LagrangeMultiplier(2)
    for regret in noise:
        floored.update(regret, 0.0, reference=torch.tensor([35.0, 35.0]))
        unfloored.update(regret, 0.0)
    assert ((floored.value - 1.0).abs() < 0.2).all(), floored.value
    assert ((unfloored.value - 1.0).abs() > 1.0).all(), unfloored.value
    with pytest.raises(ValueError, match="reference must be finite"):
        floored.update(torch.zeros(2), 0.0, reference=torch.tensor([math.nan, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"done": 4, "total": 4, "start": 0.5}, "done"),
        ({"done": 0, "total": 0, "start": 0.5}, "total"),
        ({"done": 0, "total": 4, "start": 1.5}, "start"),
    ],
)
def test_anneal_share_names_the_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        anneal_share(**kwargs)


if __name__ == "__main__":
    pytest.main([__file__, "--capture", "no", "--exitfirst"])
