"""Tests of the ReptileRegretEstimator against exact regrets of the bimatrix game."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import IndependentNormal, MaskedCategorical, MultiAgentMLP, ProbabilisticActor
from torchrl_ermas.envs import SequentialBimatrixEnv
from torchrl_ermas.envs.bimatrix_analysis import exact_regret, policy_table

from torchrl_ermas.regret import MetaGradient, ReptileRegretEstimator, own_policy_gradient
from torchrl_ermas.regret.deviation import DeviationDistributions
from torchrl_ermas.regret.trust_region import (
    DeviationBatch,
    PPODeviationStep,
    TrustRegionStep,
    _score,
    own,
    world_norm,
)
from torchrl_ermas.transforms import KLToReference

STAY, UP, DOWN = 0, 1, 2  # UP cooperates (towards n-1), DOWN defects in "dilemma"
HORIZON = 50


def make_actor(obs_dim: int = 18, share_params: bool = True, seed: int = 0) -> ProbabilisticActor:
    torch.manual_seed(seed)
    net = MultiAgentMLP(
        obs_dim,
        3,
        n_agents=2,
        centralized=False,
        share_params=share_params,
        depth=1,
        num_cells=32,
    )
    module = TensorDictModule(net, [("agents", "observation")], [("agents", "logits")])
    return ProbabilisticActor(
        module,
        in_keys=[("agents", "logits")],
        out_keys=[("agents", "action")],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def make_deterministic(actor: ProbabilisticActor, action: int, confidence: float = 5.0) -> None:
    """Turns ``actor`` into a near-deterministic policy playing ``action`` everywhere."""
    params = TensorDict.from_module(actor)
    with torch.no_grad():
        biases = [v for k, v in params.items(True, True) if k[-1] == "bias"]
        for key, value in params.items(True, True):
            if key[-1] == "weight":
                value.mul_(0.05)
        logits = torch.zeros(3)
        logits[action] = confidence
        biases[-1].copy_(logits.expand_as(biases[-1]))


def make_env(worlds_batch: int = 64) -> SequentialBimatrixEnv:
    return SequentialBimatrixEnv(2 * worlds_batch, max_steps=HORIZON)


class TestAgainstExactRegret:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_recovers_regret_of_saturated_cooperation(self, seed):
        """From near-deterministic all-cooperate play, defecting is a large improvement.

        Local deviations from a saturated softmax policy find almost nothing unless the
        steps are sized in KL and the deviating agent explores; the default settings must
        recover at least 75% of the exact regret.
        """
        env = make_env()
        actor = make_actor(seed=seed)
        make_deterministic(actor, UP)
        exact = exact_regret(env, policy_table(actor, env))
        assert (exact > 10).all()  # the setting really has a large regret
        result = ReptileRegretEstimator(actor, env, seed=seed).estimate()
        assert (result["regret"] >= 0.75 * exact).all(), (result["regret"], exact)
        assert (result["regret"] <= exact + 1.0).all()

    def test_zero_regret_at_nash(self):
        env = make_env()
        actor = make_actor()
        make_deterministic(actor, DOWN, confidence=8.0)
        exact = exact_regret(env, policy_table(actor, env))
        assert exact.abs().max() < 0.05
        regrets = torch.stack([ReptileRegretEstimator(actor, env, seed=s).estimate()["regret"] for s in range(3)])
        assert regrets.mean().abs() < 0.25  # episode-return units; one step pays 0.05-0.75
        assert regrets.max() < 0.5

    @pytest.mark.parametrize("trust_region", [0.05, 0.5, 3.0])
    def test_kl_never_exceeds_trust_region(self, trust_region):
        env = make_env(32)
        actor = make_actor()
        make_deterministic(actor, UP, confidence=3.0)
        result = ReptileRegretEstimator(actor, env, trust_region=trust_region).estimate()
        assert (result["kl"] <= trust_region + 1e-5).all()
        assert (result["kl"] > 0).all()

    def test_a_step_that_hurts_does_not_undo_the_steps_before_it(self):
        """Each agent keeps the best policy of its deviation path (the current one, then the
        deviation after each step): a last step that falls back to the current policy is
        dropped and the first step's regret is reported (a last deviation judged alone
        against the current policy reported 0)."""
        env = make_env()
        actor = make_actor()
        make_deterministic(actor, UP, confidence=3.0)
        exact = exact_regret(env, policy_table(actor, env))
        estimator = ReptileRegretEstimator(actor, env, deviation_steps=2, seed=0)
        step, starts = estimator.step, []

        def falls_back_at_the_last_step(deviation, batch, budget):
            starts.append(deviation)
            if len(starts) == 2:  # back to the current policy, as a noisy long step can
                return starts[0].clone(), torch.zeros(deviation.batch_size)
            return step(deviation, batch, budget)

        estimator.step = falls_back_at_the_last_step
        regret = estimator.estimate()["regret"]
        assert len(starts) == 2
        assert (regret >= 0.3 * exact).all(), (regret, exact)

    def test_larger_trust_region_finds_more_regret(self):
        env = make_env()
        actor = make_actor()
        make_deterministic(actor, UP)
        small = ReptileRegretEstimator(actor, env, trust_region=0.1).estimate()["regret"]
        large = ReptileRegretEstimator(actor, env, trust_region=3.0).estimate()["regret"]
        assert (large > small + 5).all()


class TestPPODeviations:
    """``deviation_optimizer="ppo"``: the deviations train like the agents (PPO epochs)."""

    @staticmethod
    def estimate(actor, env, seed: int = 0, **kwargs):
        return ReptileRegretEstimator(actor, env, seed=seed, deviation_optimizer="ppo", **kwargs).estimate()

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_finds_part_of_the_exact_regret_and_never_more(self, seed):
        """From mostly cooperative play (cooperation with probability 0.58) a few PPO
        iterations find a good part of the regret: local, like the agents' own learning."""
        env = make_env()
        actor = make_actor(seed=seed)
        make_deterministic(actor, UP, confidence=1.0)
        exact = exact_regret(env, policy_table(actor, env))
        result = self.estimate(actor, env, seed)
        assert (result["regret"] >= 0.3 * exact).all(), (result["regret"], exact)
        assert (result["regret"] <= exact + 1.0).all()
        assert (result["kl"] <= 3.0).all()

    def test_zero_regret_at_nash(self):
        env = make_env()
        actor = make_actor()
        make_deterministic(actor, DOWN, confidence=8.0)
        regrets = torch.stack([self.estimate(actor, env, s)["regret"] for s in range(3)])
        assert regrets.abs().max() < 0.25

    @pytest.mark.parametrize("trust_region", [0.005, 0.05])
    def test_kl_never_exceeds_trust_region(self, trust_region):
        env = make_env(32)
        actor = make_actor()
        make_deterministic(actor, UP, confidence=1.0)
        result = self.estimate(actor, env, trust_region=trust_region, ppo_kwargs={"lr": 0.05})
        assert (result["kl"] <= trust_region + 1e-6).all(), result["kl"]

    def test_estimate_leaves_current_policy_unchanged(self):
        actor = make_actor()
        before = copy.deepcopy(TensorDict.from_module(actor).data)
        self.estimate(actor, make_env(8))
        assert (TensorDict.from_module(actor).data == before).all()

    def test_one_rate_per_world_is_each_world_s_own_adam(self):
        """With one learning rate per world each world takes the steps of its own Adam: the
        world at the highest rate exactly, the others up to rounding."""
        torch.manual_seed(0)
        net = MultiAgentMLP(4, 3, n_agents=2, centralized=False, share_params=True, depth=1, num_cells=8)
        actor = ProbabilisticActor(
            TensorDictModule(net, [("agents", "observation")], [("agents", "logits")]),
            in_keys=[("agents", "logits")],
            out_keys=[("agents", "action")],
            distribution_class=torch.distributions.Categorical,
        )
        dists = DeviationDistributions(actor, [("agents", "logits")])
        kl = KLToReference(actor, in_keys=list(actor.in_keys))
        obs = TensorDict({("agents", "observation"): torch.randn(4, 64, 2, 4)}, [4, 64])
        batch = DeviationBatch(obs, torch.randint(3, (4, 64, 2)), torch.full((4, 64), -1.1), torch.randn(4, 64))
        start = TensorDict.from_module(actor).data.expand(4).clone()

        def step(lr) -> torch.Tensor:
            """The worlds' parameters after the step, flat: ``[W, P]``."""
            torch.manual_seed(1)  # the same minibatches
            params = PPODeviationStep(dists, kl, lr=lr, epochs=2)(start, batch, 10.0)[0]
            return torch.cat([leaf.flatten(1) for leaf in params.values(True, True)], -1)

        initial = torch.cat([leaf.flatten(1) for leaf in start.values(True, True)], -1)
        rates = (0.01, 0.03, 0.003, 0.03)
        mixed = step(torch.tensor(rates, dtype=torch.float64))
        for world, lr in enumerate(rates):
            alone = step(lr)[world]
            moved = (alone - initial[world]).abs().max()
            assert moved > 1e-3  # the steps are not negligible
            if lr == max(rates):
                assert torch.equal(mixed[world], alone)
            else:
                assert (mixed[world] - alone).abs().max() < 1e-5 * moved

    @pytest.mark.parametrize(
        "lr", [torch.tensor([[0.01]]), torch.tensor([0.01, 0.0]), torch.tensor([]), torch.tensor([float("nan")])]
    )
    def test_per_world_rates_must_be_positive_and_finite(self, lr):
        actor = make_actor()
        dists = DeviationDistributions(actor, [("agents", "logits")])
        with pytest.raises(ValueError, match="lr must be a finite number > 0 or a 1-D tensor of them"):
            PPODeviationStep(dists, KLToReference(actor, in_keys=list(actor.in_keys)), lr=lr)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (dict(deviation_optimizer="adam"), "deviation_optimizer"),
            (dict(ppo_kwargs={"lr": 1e-3}), "ppo_kwargs applies to deviation_optimizer='ppo' only"),
            (dict(deviation_optimizer="ppo", confidence=0.5), r"\['confidence'\] set the line search"),
            (dict(deviation_optimizer="ppo", ppo_kwargs={"momentum": 0.9}), r"unknown settings \['momentum'\]"),
            (dict(deviation_optimizer="ppo", ppo_kwargs={"clip_epsilon": 1.5}), "clip_epsilon"),
            (dict(deviation_optimizer="ppo", ppo_kwargs={"lr": float("nan")}), "lr"),
            (dict(deviation_optimizer="ppo", ppo_kwargs={"epochs": 0}), "epochs"),
            (dict(line_search_samples=1), r"line_search_samples must be an int >= 2, got 1"),
        ],
    )
    def test_invalid_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            ReptileRegretEstimator(make_actor(), make_env(4), **kwargs)


class TestRunsInOneBatch:
    """``estimate(params=...)``: the current policies of several runs deviate in one batch."""

    @staticmethod
    def runs(*actions: int) -> list[ProbabilisticActor]:
        """One actor per run, near-deterministic on ``actions[r]``, from different seeds."""
        actors = [make_actor(seed=run) for run in range(len(actions))]
        for actor, action in zip(actors, actions):
            make_deterministic(actor, action, confidence=5.0 if action == UP else 8.0)
        return actors

    @staticmethod
    def stacked(actors: list[ProbabilisticActor]) -> TensorDict:
        return torch.stack([TensorDict.from_module(actor).data for actor in actors])

    @pytest.mark.parametrize("seed", [0, 1])
    def test_each_run_recovers_its_own_exact_regret(self, seed):
        """Runs at saturated cooperation, at the Nash equilibrium and at cooperation again:
        each run's estimate holds the bounds of a run estimated alone (at least 75 % of its
        exact regret where it is large, about 0 at Nash), within the trust region."""
        actors = self.runs(UP, DOWN, UP)
        env = make_env()
        exact = torch.stack([exact_regret(env, policy_table(actor, env)) for actor in actors])
        batched_env = SequentialBimatrixEnv(3 * 2 * 64, max_steps=HORIZON)
        estimator = ReptileRegretEstimator(copy.deepcopy(actors[0]), batched_env, seed=seed)
        result = estimator.estimate(params=self.stacked(actors))
        assert result.batch_size == (3, 2)
        for run in (0, 2):
            assert (result["regret"][run] >= 0.75 * exact[run]).all(), (result["regret"], exact)
            assert (result["regret"][run] <= exact[run] + 1.0).all()
        assert result["regret"][1].abs().max() < 0.5
        assert (result["kl"] <= 3.0 + 1e-4).all()

    @pytest.mark.parametrize("optimizer", ["line_search", "ppo"])
    def test_a_run_is_blind_to_the_other_runs(self, optimizer):
        """Changing run 1's policy (cooperation to Nash) leaves the estimates of runs 0 and 2
        bit-identical."""
        actors = self.runs(UP, UP, DOWN)
        estimator = ReptileRegretEstimator(
            copy.deepcopy(actors[0]), SequentialBimatrixEnv(3 * 2 * 8, max_steps=20), deviation_optimizer=optimizer
        )
        params = self.stacked(actors)
        torch.manual_seed(0)
        reference = estimator.estimate(seed=1, params=params)
        params[1] = self.stacked(self.runs(DOWN, DOWN))[1]
        torch.manual_seed(0)
        perturbed = estimator.estimate(seed=1, params=params)
        for key in ("regret", "kl", "current_return"):
            assert torch.equal(reference[key][[0, 2]], perturbed[key][[0, 2]]), key
        assert not torch.equal(reference["current_return"][1], perturbed["current_return"][1])

    def test_rejects_params_and_batches_that_do_not_fit(self):
        actors = self.runs(UP, UP, UP)
        estimator = ReptileRegretEstimator(copy.deepcopy(actors[0]), SequentialBimatrixEnv(2 * 8, max_steps=5))
        with pytest.raises(ValueError, match=r"\[3 \* 2 \* B\]"):
            estimator.estimate(params=self.stacked(actors))
        with pytest.raises(ValueError, match="stacked on a leading dim"):
            estimator.estimate(params=TensorDict.from_module(actors[0]).data)


class TestTrustRegionKL:
    def test_the_bound_is_klto_reference_in_the_direction_of_eq_12(self):
        """The estimator bounds its deviations with KLToReference (reference: the current
        policy): the transform, given a deviation as the live policy, measures the KL the
        estimator reports, KL(pi || pi'), not the reverse direction."""
        env = make_env(32)
        actor = make_actor()
        make_deterministic(actor, UP, confidence=3.0)
        estimator = ReptileRegretEstimator(actor, env, deviation_steps=2, trust_region=0.5, seed=3)
        assert isinstance(estimator.kl, KLToReference)
        result = estimator.estimate()
        current = TensorDict.from_module(actor).data.clone()
        data = env.rollout(HORIZON, actor, break_when_any_done=False).reshape(-1)
        for world in range(2):
            live = copy.deepcopy(actor)
            result["deviation_params"][world].to_module(live)
            transform = KLToReference(live, reference_params=current)
            forward = transform.kl(data)[..., world, 0].mean()
            with torch.no_grad():
                p, q = actor.get_dist(data.select(*actor.in_keys)), live.get_dist(data.select(*actor.in_keys))
            reverse = torch.distributions.kl_divergence(q, p)[..., world].mean()
            assert abs(forward - result["kl"][world]) < 0.15 * result["kl"][world] + 0.02, (forward, result["kl"])
            assert not torch.isclose(forward, reverse, rtol=0.05)


class TestMechanics:
    def test_common_random_numbers_give_zero_regret_for_no_deviation(self):
        """A deviation that cannot move (tiny budget) is evaluated on identical rollouts."""
        env = make_env(16)
        actor = make_actor()
        result = ReptileRegretEstimator(actor, env, trust_region=1e-12).estimate()
        assert (result["regret"] == 0).all()
        assert (result["deviation_return"] == result["current_return"]).all()

    def test_estimate_leaves_current_policy_unchanged(self):
        env = make_env(16)
        actor = make_actor()
        before = TensorDict.from_module(actor).data.clone()
        ReptileRegretEstimator(actor, env, deviation_steps=1).estimate()
        assert (TensorDict.from_module(actor).data == before).all()

    def test_per_agent_parameters_deviate_only_in_own_slice(self):
        env = make_env(16)
        actor = make_actor(share_params=False)
        make_deterministic(actor, UP)
        current = TensorDict.from_module(actor).data
        deviation = ReptileRegretEstimator(actor, env, deviation_steps=1).estimate()["deviation_params"]
        for world in range(2):
            changed = (deviation[world] - current).abs().apply(lambda x: x.flatten(1).sum(-1))
            for value in changed.values(True, True):  # [n_agents] per leaf
                assert value[1 - world] == 0
            assert sum(v[world] for v in changed.values(True, True)) > 0

    def test_meta_gradient_is_each_agents_own_gradient_at_its_deviation(self):
        """With per-agent parameters, world i's meta gradient touches agent i's slice only."""
        env = make_env(16)
        actor = make_actor(share_params=False)
        make_deterministic(actor, UP)
        result = ReptileRegretEstimator(actor, env, deviation_steps=1, meta_gradient=True).estimate()
        gradient = result["meta_gradient"]
        assert gradient.batch_size == (2,)
        for world in range(2):
            size = gradient[world].abs().apply(lambda x: x.flatten(1).sum(-1))
            assert all(value[1 - world] == 0 for value in size.values(True, True))
            assert sum(value[world] for value in size.values(True, True)) > 0

    def test_with_planner_policy(self):
        env = SequentialBimatrixEnv(2 * 8, planner="officers", max_steps=10)
        actor = make_actor()
        planner = ProbabilisticActor(
            TensorDictModule(torch.nn.Linear(16 + 13, 5), [("planner", "observation")], [("planner", "logits")]),
            in_keys=[("planner", "logits")],
            out_keys=[("planner", "action")],
            distribution_class=torch.distributions.Categorical,
        )
        result = ReptileRegretEstimator(actor, env, planner_policy=planner, deviation_steps=1).estimate()
        assert result["regret"].shape == (2,)
        assert torch.isfinite(result["regret"]).all()

    def test_planner_samples_its_actions_in_the_estimate(self):
        """The estimate faces the planner the agents train against: its actions are sampled
        (TorchRL's default interaction type would play the mode)."""
        env = SequentialBimatrixEnv(2 * 8, planner="officers", max_steps=10)
        linear = torch.nn.Linear(env.planner_obs_dim, 5)
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)  # uniform over the five officer moves
        planner = ProbabilisticActor(
            TensorDictModule(linear, [("planner", "observation")], [("planner", "logits")]),
            in_keys=[("planner", "logits")],
            out_keys=[("planner", "action")],
            distribution_class=torch.distributions.Categorical,
        )
        seen = []  # outside the module: every rollout acts with a deep copy of the planner

        def record(module, args, output):
            seen.append(output.get(("planner", "action")).clone())

        planner.register_forward_hook(record)
        ReptileRegretEstimator(make_actor(), env, planner_policy=planner, deviation_steps=1).estimate()
        assert torch.cat(seen).unique().tolist() == [0, 1, 2, 3, 4]


def _random_batch(actor, n_samples: int = 6) -> DeviationBatch:
    observation = TensorDict({("agents", "observation"): torch.randn(2, n_samples, 2, 18)}, [2, n_samples])
    return DeviationBatch(
        observation,
        action=torch.randint(3, (2, n_samples, 2)),
        behaviour_log_prob=torch.rand(2, n_samples).log(),
        advantage=torch.randn(2, n_samples),
    )


class TestMetaGradient:
    def test_own_policy_gradient_matches_each_world_alone(self):
        """The vmapped gradient equals, world by world, autograd of the importance-weighted
        surrogate of the deviating agent on the plain actor."""
        actor = make_actor()
        theta = TensorDict.from_module(actor).data
        deviation = theta.expand(2).clone().apply(lambda x: x + 0.1 * torch.randn_like(x))
        batch = _random_batch(actor)
        gradient = own_policy_gradient(DeviationDistributions(actor, [("agents", "logits")]), deviation, batch)
        for world in range(2):
            reference = copy.deepcopy(actor)
            params = deviation[world].clone().requires_grad_()
            with params.to_module(reference):
                dist = reference.get_dist(batch.observation[world].copy())
                log_prob = dist.log_prob(batch.action[world])[:, world]
            weight = (log_prob.detach() - batch.behaviour_log_prob[world]).exp() * batch.advantage[world]
            (weight * log_prob).mean().backward()
            for key, value in params.items(True, True):
                torch.testing.assert_close(gradient[world][key], value.grad, rtol=1e-5, atol=1e-7)

    def test_update_weights_each_agent_by_beta_lambda_over_one_plus_lambda(self):
        actor = make_actor()
        params = TensorDict.from_module(actor)
        gradients = params.data.expand(2).clone().apply(torch.randn_like)
        meta = MetaGradient(params, scale=0.6)
        meta.update(gradients, torch.tensor([1.0, 9.0]))  # weights 0.3 and 0.54
        expected = (gradients[0] * 0.3 + gradients[1] * 0.54) / 2
        for key, value in expected.items(True, True):
            torch.testing.assert_close(meta.gradient[key], value)
        # the loss's gradient with respect to the parameters is the combined gradient
        meta(params).backward()
        for key, value in params.items(True, True):
            torch.testing.assert_close(value.grad, expected[key])

    def test_scale_zero_adds_nothing(self):
        params = TensorDict.from_module(make_actor())
        meta = MetaGradient(params, scale=0.0)
        meta.update(params.data.expand(2).clone().apply(torch.randn_like), torch.ones(2))
        assert meta(params).item() == 0.0

    def test_gradient_travels_with_state_dict(self):
        params = TensorDict.from_module(make_actor())
        meta = MetaGradient(params, scale=1.0)
        meta.update(params.data.expand(2).clone().apply(torch.randn_like), torch.ones(2))
        restored = MetaGradient(params, scale=1.0)
        restored.load_state_dict(meta.state_dict())
        assert (restored.gradient == meta.gradient).all()


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs,name",
        [
            (dict(trust_region=0.0), "trust_region"),
            (dict(trust_region=-1.0), "trust_region"),
            (dict(trust_region=float("nan")), "trust_region"),
            (dict(deviation_steps=0), "deviation_steps"),
            (dict(exploration=1.0), "exploration"),
            (dict(exploration=-0.1), "exploration"),
            (dict(gamma=0.0), "gamma"),
            (dict(meta_gradient=0.2), "meta_gradient"),
            (dict(horizon=0), "horizon"),
            (dict(max_step_scale=0.0), "max_step_scale"),
            (dict(line_search_points=0), "line_search_points"),
            (dict(group="players"), "group"),
            (dict(seed=-1), r"seed must be an int in \[0, "),
            (dict(seed=2**70), r"seed must be an int in \[0, "),
        ],
    )
    def test_invalid_arguments(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            ReptileRegretEstimator(make_actor(), make_env(4), **kwargs)

    @pytest.mark.parametrize("scale", [-0.2, 1.5, float("nan")])
    def test_invalid_meta_scale(self, scale):
        with pytest.raises(ValueError, match=r"scale must be a finite number >= 0 and <= 1"):
            MetaGradient(TensorDict.from_module(make_actor()), scale=scale)

    def test_batch_not_divisible_into_worlds(self):
        with pytest.raises(ValueError, match="batch_size"):
            ReptileRegretEstimator(make_actor(), SequentialBimatrixEnv(5))

    def test_meta_gradient_lagrange_size(self):
        params = TensorDict.from_module(make_actor())
        with pytest.raises(ValueError, match="lagrange must hold n_agents=2"):
            MetaGradient(params, scale=0.2).update(params.data.expand(2).clone(), torch.ones(3))


@pytest.mark.parametrize("masked", [False, True])
def test_categorical_score_is_blind_to_a_state_baseline(masked):
    """sum_a grad l(a | s) = 0 over the allowed actions: a baseline c(s) adds nothing."""
    logits = torch.randn(5, 4, requires_grad=True)
    mask = torch.tensor([True, False, True, True]).expand(5, 4)
    dist = MaskedCategorical(logits=logits, mask=mask) if masked else torch.distributions.Categorical(logits=logits)
    allowed = [0, 2, 3] if masked else [0, 1, 2, 3]
    total = sum(_score(dist, torch.full((5,), a)) for a in allowed)
    torch.testing.assert_close(total, torch.zeros(5), atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad((torch.randn(5) * total).sum(), logits, retain_graph=True)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-5, rtol=0)
    # the actions themselves still get a gradient (unlike grad pi for a saturated policy)
    (grad,) = torch.autograd.grad(_score(dist, torch.zeros(5, dtype=torch.long)).sum(), logits)
    assert (grad[:, 0] > 0).all()


def test_density_direction_is_the_importance_weighted_policy_gradient():
    """For a Gaussian policy the step's direction is the deviation's importance-weighted
    policy gradient (the gradient the line search's surrogate and the meta term use), not
    ``1 / behaviour``-weighted scores, which put most of the weight on the tails."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        MultiAgentMLP(3, 2, n_agents=2, centralized=False, share_params=True, depth=1, num_cells=8),
        NormalParamExtractor(),
    )
    module = TensorDictModule(net, [("agents", "observation")], [("agents", "loc"), ("agents", "scale")])
    actor = ProbabilisticActor(
        module,
        in_keys=[("agents", "loc"), ("agents", "scale")],
        out_keys=[("agents", "action")],
        distribution_class=IndependentNormal,
    )
    dists = DeviationDistributions(actor, [("agents", "loc"), ("agents", "scale")])
    step = TrustRegionStep(dists, KLToReference(actor, in_keys=list(actor.in_keys)))
    params = TensorDict.from_module(actor).data.expand(2).clone()
    observation = TensorDict({("agents", "observation"): torch.randn(2, 2048, 2, 3)}, [2, 2048])
    with torch.no_grad():
        behaviour = actor.build_dist_from_params(dists.deviating(params, observation))
        action = behaviour.sample() * 1.5  # rollouts that explored beyond the policy
        behaviour_log_prob = own(behaviour.log_prob(action)) - math.log(1.5)
    advantage = own(action.squeeze(-1))
    batch = DeviationBatch(observation, action, behaviour_log_prob, advantage)
    direction = step.direction(params, batch)
    gradient = own_policy_gradient(dists, params, batch)
    cosine = sum(
        (direction.get(key) * gradient.get(key)).flatten(1).sum(-1) for key in direction.keys(True, True)
    ) / world_norm(gradient)
    torch.testing.assert_close(cosine, torch.ones(2), atol=1e-4, rtol=0)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
