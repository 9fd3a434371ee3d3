"""Tests of the reward transforms: reality gap, domain randomization, concave planner reward."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, LazyTensorStorage, ReplayBuffer, Unbounded
from torchrl.envs import Compose, SerialEnv, TransformedEnv
from torchrl.envs.utils import check_env_specs
from torchrl_ermas.envs import NMatrixGameEnv, SequentialBimatrixEnv, nmatrix_payoffs

from torchrl_ermas.transforms import (
    ConcavePlannerReward,
    DomainRandomizedReward,
    PlannerRewardGap,
    isoelastic,
)

AGENT_R = ("next", "agents", "reward")
PLANNER_R = ("next", "planner", "reward")
NOISE = ("next", "agents", "reward_noise")
MAX_STEPS = 4


def bimatrix_passive(batch=4):
    return SequentialBimatrixEnv(batch, max_steps=MAX_STEPS)


def bimatrix_officers(batch=4):
    return SequentialBimatrixEnv(batch, planner="officers", max_steps=MAX_STEPS)


def nmatrix(batch=4):
    # |N(0, 1)| payoffs keep the planner reward > -1 (the concave transform's domain)
    payoffs = nmatrix_payoffs(3, 3).abs()
    return NMatrixGameEnv(batch, n_agents=3, grid_size=3, payoffs=payoffs, max_steps=MAX_STEPS)


ENVS = [bimatrix_passive, bimatrix_officers, nmatrix]
TRANSFORMS = {
    "gap": lambda: PlannerRewardGap(0.7),
    "dr_episode": lambda: DomainRandomizedReward(0.3, "episode", seed=0),
    "dr_step": lambda: DomainRandomizedReward(0.3, "step", seed=0),
    "concave": lambda: ConcavePlannerReward(2.0),
}


def rollout(env, steps=MAX_STEPS, seed=0, **kwargs):
    """A random-action rollout, reproducible across a base env and its transformed version."""
    torch.manual_seed(seed)
    env.set_seed(seed)
    return env.rollout(steps, **kwargs)


# ---------------------------------------------------------------- TransformBase-style checks
@pytest.mark.parametrize("make_env", ENVS)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_check_env_specs(make_env, name):
    check_env_specs(TransformedEnv(make_env(), TRANSFORMS[name]()), seed=0)


@pytest.mark.parametrize("batch", [1, (2, 3)])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_single_and_multidim_batch(batch, name):
    check_env_specs(TransformedEnv(bimatrix_officers(batch), TRANSFORMS[name]()), seed=0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_serial_env(name):
    env = SerialEnv(2, lambda: TransformedEnv(bimatrix_officers(3), TRANSFORMS[name]()))
    check_env_specs(env, seed=0)
    env = TransformedEnv(SerialEnv(2, lambda: bimatrix_officers(3)), TRANSFORMS[name]())
    check_env_specs(env, seed=0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_compose_matches_single(name):
    single = rollout(TransformedEnv(nmatrix(), TRANSFORMS[name]()))
    composed = rollout(TransformedEnv(nmatrix(), Compose(TRANSFORMS[name]())))
    torch.testing.assert_close(single["next"], composed["next"])


def test_compose_chain_specs():
    transform = Compose(PlannerRewardGap(0.5), DomainRandomizedReward(0.2, seed=0), ConcavePlannerReward(1.0))
    check_env_specs(TransformedEnv(bimatrix_officers(), transform), seed=0)


@pytest.mark.parametrize("make_env", ENVS)
@pytest.mark.parametrize("name", ["gap", "concave"])
def test_offline_equals_online(make_env, name):
    online = rollout(TransformedEnv(make_env(), TRANSFORMS[name]()))
    offline = TRANSFORMS[name]()(rollout(make_env()))
    torch.testing.assert_close(offline[AGENT_R], online[AGENT_R])
    torch.testing.assert_close(offline[PLANNER_R], online[PLANNER_R])


def test_replay_buffer_transform():
    data = rollout(bimatrix_officers()).reshape(-1)
    data["idx"] = torch.arange(data.numel())
    rb = ReplayBuffer(storage=LazyTensorStorage(64), transform=PlannerRewardGap(1.0), batch_size=8)
    rb.extend(data)
    sample = rb.sample()
    raw = data[sample["idx"]]
    torch.testing.assert_close(sample[AGENT_R], raw[AGENT_R] - raw[PLANNER_R])


def test_offline_without_next_and_nested_keys():
    data = TensorDict({("team", "r"): torch.ones(5, 3, 1), ("boss", "r"): torch.full((5, 1, 1), 2.0)}, [5])
    PlannerRewardGap(0.25, agent_reward_key=("team", "r"), planner_reward_key=("boss", "r"))(data)
    torch.testing.assert_close(data["team", "r"], torch.full((5, 3, 1), 0.5))
    ConcavePlannerReward(1.0, planner_reward_key=("boss", "r"))(data)
    torch.testing.assert_close(data["boss", "r"], torch.full((5, 1, 1), math.log(3.0)))
    DomainRandomizedReward(0.1, agent_reward_key=("team", "r"), noise_key="sigma")(data)
    torch.testing.assert_close(data["team", "r"], 0.5 + data["sigma"])


# ---------------------------------------------------------------- PlannerRewardGap
def test_gap_hand_computed():
    data = TensorDict(
        {
            AGENT_R: torch.tensor([[[1.0], [2.0]], [[0.0], [-1.0]]]),
            PLANNER_R: torch.tensor([[[4.0]], [[-2.0]]]),
        },
        [2],
    )
    out = PlannerRewardGap(0.5)(data)
    torch.testing.assert_close(out[AGENT_R], torch.tensor([[[-1.0], [0.0]], [[1.0], [0.0]]]))
    torch.testing.assert_close(out[PLANNER_R], torch.tensor([[[4.0]], [[-2.0]]]))


def test_gap_per_environment_equals_scalar_gaps():
    """One q per environment (a population's runs) applies each environment's own q, bit
    for bit the scalar transform's result (offline on [envs, time] data here; online in the
    docstring example)."""
    q = torch.tensor([0.0, 0.5, -0.3])
    data = TensorDict({AGENT_R: torch.randn(3, 4, 2, 1), PLANNER_R: torch.randn(3, 4, 1, 1)}, [3, 4])
    out = PlannerRewardGap(q)(data.clone())
    for env, value in enumerate(q.tolist()):
        expected = PlannerRewardGap(value)(data[env].clone()) if value else data[env]
        assert torch.equal(out[env][AGENT_R], expected[AGENT_R])


@pytest.mark.parametrize("q", [torch.tensor([0.5, float("nan")]), torch.tensor(0.5), torch.tensor([1, 2])])
def test_gap_rejects_bad_per_environment_q(q):
    with pytest.raises(ValueError, match="q must be"):
        PlannerRewardGap(q)


@pytest.mark.parametrize("q", [float("nan"), float("inf"), "0.5", True, None])
def test_gap_rejects_bad_q(q):
    with pytest.raises(ValueError, match="q must be"):
        PlannerRewardGap(q)


def bounded_reward_spec():
    unit = dict(low=0.0, high=1.0)
    return Composite(
        agents=Composite(reward=Bounded(shape=(4, 2, 1), **unit), shape=(4, 2)),
        planner=Composite(reward=Bounded(shape=(4, 1, 1), **unit), shape=(4, 1)),
        shape=(4,),
    )


def test_transformed_reward_specs_are_unbounded():
    spec = PlannerRewardGap(1.0).transform_reward_spec(bounded_reward_spec())
    assert isinstance(spec["agents", "reward"], Unbounded)
    assert isinstance(spec["planner", "reward"], Bounded)
    spec = ConcavePlannerReward(1.0).transform_reward_spec(bounded_reward_spec())
    assert isinstance(spec["agents", "reward"], Bounded)
    assert isinstance(spec["planner", "reward"], Unbounded)
    output = Composite(
        full_reward_spec=bounded_reward_spec(),
        full_observation_spec=Composite(shape=(4,)),
        shape=(4,),
    )
    output = DomainRandomizedReward(0.5).transform_output_spec(output)
    assert isinstance(output["full_reward_spec", "agents", "reward"], Unbounded)
    noise_spec = output["full_observation_spec", "agents", "reward_noise"]
    assert noise_spec.shape == (4, 2, 1)
    assert noise_spec.space.low.min() == -0.5 and noise_spec.space.high.max() == 0.5


# ---------------------------------------------------------------- ConcavePlannerReward
@pytest.mark.parametrize(
    "eta, expected",
    [
        (0.0, [-0.5, 0.0, 1.0, 3.0]),
        (1.0, [math.log(0.5), 0.0, math.log(2.0), math.log(4.0)]),
        (2.0, [-1.0, 0.0, 0.5, 0.75]),
        (0.5, [2 * (math.sqrt(0.5) - 1), 0.0, 2 * (math.sqrt(2.0) - 1), 2.0]),
    ],
)
def test_concave_hand_computed(eta, expected):
    x = torch.tensor([-0.5, 0.0, 1.0, 3.0])
    torch.testing.assert_close(isoelastic(x, eta), torch.tensor(expected))
    data = TensorDict({PLANNER_R: x.reshape(4, 1, 1), AGENT_R: torch.ones(4, 2, 1)}, [4])
    out = ConcavePlannerReward(eta)(data)
    torch.testing.assert_close(out[PLANNER_R].flatten(), torch.tensor(expected))
    torch.testing.assert_close(out[AGENT_R], torch.ones(4, 2, 1))


@pytest.mark.parametrize("eta", [-0.1, float("inf"), float("nan"), "1"])
def test_concave_rejects_bad_eta(eta):
    with pytest.raises(ValueError, match="eta must be"):
        ConcavePlannerReward(eta)


@pytest.mark.parametrize("eta", [0.0, torch.zeros(3)])
def test_concave_eta_zero_keeps_any_reward_exactly(eta):
    """eta = 0 is the identity, as a number and per environment alike, on any reward."""
    reward = torch.tensor([[[-3.0]], [[0.1234567]], [[1e-7]]])
    data = TensorDict({PLANNER_R: reward.clone()}, [3])
    assert torch.equal(ConcavePlannerReward(eta)(data)[PLANNER_R], reward)


@pytest.mark.parametrize("bad", [-1.0, -3.0, float("nan")])
def test_concave_rejects_reward_outside_domain(bad):
    data = TensorDict({PLANNER_R: torch.tensor([[[0.5]], [[bad]]])}, [2])
    with pytest.raises(ValueError, match=r"planner rewards > -1.*\('planner', 'reward'\)"):
        ConcavePlannerReward(1.0)(data)


def test_concave_online_raises_outside_domain():
    # standard-normal payoffs go below -1: the transform refuses instead of clipping
    env = TransformedEnv(NMatrixGameEnv(16, n_agents=2, grid_size=3), ConcavePlannerReward(1.0))
    with pytest.raises(ValueError, match="planner rewards > -1"):
        rollout(env, 10)


def test_concave_per_environment_equals_scalar_etas():
    """One eta per environment (a population's runs): each environment gets its own eta's
    utility, an environment with eta 0 keeps its reward bit for bit (even outside the
    domain, where a run without RR has rewards <= -1), and the domain is checked only
    where eta > 0."""
    eta = torch.tensor([0.0, 1.0, 2.0, 0.5])
    reward = torch.tensor([-3.0, 0.5, 1.0, 3.0]).reshape(4, 1, 1, 1).expand(4, 5, 1, 1).clone()
    out = ConcavePlannerReward(eta)(TensorDict({PLANNER_R: reward}, [4, 5]))[PLANNER_R]
    assert torch.equal(out[0], reward[0])
    for env in (1, 2, 3):
        torch.testing.assert_close(out[env], isoelastic(reward[env], eta[env].item()))
    with pytest.raises(ValueError, match=r"planner rewards > -1.*holds -3.0"):
        ConcavePlannerReward(torch.tensor([1.0, 1.0, 2.0, 0.5]))(TensorDict({PLANNER_R: reward}, [4, 5]))


@pytest.mark.parametrize("eta", [torch.tensor([1.0, -0.5]), torch.tensor([1.0, float("nan")]), torch.tensor(1.0)])
def test_concave_rejects_bad_per_environment_eta(eta):
    with pytest.raises(ValueError, match="eta must be a finite number >= 0 or a 1-d or larger float tensor"):
        ConcavePlannerReward(eta)


# ---------------------------------------------------------------- DomainRandomizedReward
def test_dr_per_environment_scale():
    """One scale per environment: online, each environment's noise is the scalar transform's
    draws times its scale (0: no noise), and the noise spec bounds each environment by its
    own scale."""
    scale = torch.tensor([0.0, 0.3, 1.0, 2.0])
    per_env = TransformedEnv(bimatrix_passive(), DomainRandomizedReward(scale, seed=0))
    unit = TransformedEnv(bimatrix_passive(), DomainRandomizedReward(1.0, seed=0))
    noise = rollout(per_env, 2 * MAX_STEPS, break_when_any_done=False)[NOISE]
    expected = rollout(unit, 2 * MAX_STEPS, break_when_any_done=False)[NOISE] * scale.view(4, 1, 1, 1)
    assert torch.equal(noise, expected)
    assert (noise[0] == 0).all() and (noise[1:] != 0).all()
    high = per_env.full_observation_spec["agents", "reward_noise"].space.high
    assert torch.equal(high, scale.view(4, 1, 1).expand(4, 2, 1))
    check_env_specs(per_env)


@pytest.mark.parametrize("scale", [torch.tensor([0.5, -0.1]), torch.tensor([float("inf")]), torch.tensor([1, 2])])
def test_dr_rejects_bad_per_environment_scale(scale):
    with pytest.raises(ValueError, match="scale must be a finite number >= 0 or a 1-d or larger float tensor"):
        DomainRandomizedReward(scale)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_dr_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be"):
        DomainRandomizedReward(scale)


def test_dr_rejects_bad_resample():
    with pytest.raises(ValueError, match=r"resample must be one of \('episode', 'step'\)"):
        DomainRandomizedReward(1.0, "trajectory")


@pytest.mark.parametrize("seed", [-1, 2**70, 1.5])
def test_dr_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match=r"seed must be None or an int in \[0, "):
        DomainRandomizedReward(1.0, seed=seed)


@pytest.mark.parametrize("resample", ["episode", "step"])
@pytest.mark.parametrize("make_env", ENVS)
def test_dr_online_noise(make_env, resample):
    scale, steps = 0.3, 3 * MAX_STEPS  # three episodes, all environments reset together
    env = TransformedEnv(make_env(), DomainRandomizedReward(scale, resample, seed=0))
    data = rollout(env, steps, break_when_any_done=False)
    base = rollout(make_env(), steps, break_when_any_done=False)
    noise = data[NOISE]
    assert noise.shape == base[AGENT_R].shape
    assert noise.abs().max() <= scale
    # the noise is added afresh to the environment's reward: it never accumulates
    torch.testing.assert_close(data[AGENT_R] - base[AGENT_R], noise)
    torch.testing.assert_close(data[PLANNER_R], base[PLANNER_R])
    per_step = noise.unflatten(1, (3, MAX_STEPS))  # [B, episode, t, N, 1]
    changes = (per_step[:, :, 1:] != per_step[:, :, :-1]).all(-1).all(-1)
    if resample == "episode":
        assert not changes.any()  # constant within an episode
        assert (per_step[:, 1:, 0] != per_step[:, :-1, 0]).all()  # redrawn at every reset
    else:
        assert changes.all()  # a new draw every step


@pytest.mark.parametrize("batch", [(6,), (2, 3)])
def test_dr_partial_reset_redraws_only_masked(batch):
    transform = DomainRandomizedReward(1.0, seed=0)
    env = TransformedEnv(bimatrix_officers(batch), transform)
    env.reset()
    before = transform.noise.clone()
    mask = torch.tensor([True, False, True, False, False, True]).reshape(*batch, 1)
    out = env.reset(TensorDict({"_reset": mask}, batch))
    after = transform.noise
    env_mask = mask.squeeze(-1)
    assert (after[env_mask] != before[env_mask]).all()
    torch.testing.assert_close(after[~env_mask], before[~env_mask])
    torch.testing.assert_close(out["agents", "reward_noise"][env_mask], after[env_mask])
    # the next step adds the stored noise, for reset and untouched environments alike
    step = env.step(env.rand_action(out))
    torch.testing.assert_close(step[NOISE], after)


def test_dr_step_mode_reset_zeroes_noise():
    transform = DomainRandomizedReward(1.0, "step", seed=0)
    env = TransformedEnv(bimatrix_passive(), transform)
    td = env.reset()
    torch.testing.assert_close(td["agents", "reward_noise"], torch.zeros(4, 2, 1))
    td = env.step(env.rand_action(td))
    torch.testing.assert_close(td[NOISE], transform.noise)
    assert (transform.noise != 0).all()


def test_dr_step_before_reset_raises():
    env = TransformedEnv(bimatrix_passive(), DomainRandomizedReward(1.0, seed=0))
    with pytest.raises(RuntimeError, match="reset the environment"):
        env.step(env.full_action_spec.rand())


@pytest.mark.parametrize("resample", ["episode", "step"])
def test_dr_seeded_determinism(resample):
    def noise_of(transform):
        return rollout(TransformedEnv(nmatrix(), transform), 2 * MAX_STEPS, break_when_any_done=False)[NOISE]

    first = noise_of(DomainRandomizedReward(0.5, resample, seed=3))
    torch.testing.assert_close(noise_of(DomainRandomizedReward(0.5, resample, seed=3)), first)
    reseeded = DomainRandomizedReward(0.5, resample, seed=99)
    reseeded.set_seed(3)
    torch.testing.assert_close(noise_of(reseeded), first)
    assert not torch.equal(noise_of(DomainRandomizedReward(0.5, resample, seed=4)), first)
    # seed=None draws the seed from torch's global generator
    torch.manual_seed(11)
    unseeded = DomainRandomizedReward(0.5, resample)
    torch.manual_seed(11)
    torch.testing.assert_close(noise_of(DomainRandomizedReward(0.5, resample)), noise_of(unseeded))


@pytest.mark.parametrize("resample", ["episode", "step"])
def test_dr_offline_equals_online_when_resets_are_synchronised(resample):
    steps = 3 * MAX_STEPS
    online = rollout(
        TransformedEnv(nmatrix(), DomainRandomizedReward(0.4, resample, seed=7)), steps, break_when_any_done=False
    )
    base = rollout(nmatrix(), steps, break_when_any_done=False)
    offline = DomainRandomizedReward(0.4, resample, seed=7)(base.clone())
    torch.testing.assert_close(offline[NOISE], online[NOISE])
    torch.testing.assert_close(offline[AGENT_R], online[AGENT_R])


def test_dr_offline_episodes_follow_done_flags():
    base = rollout(bimatrix_passive(3), 10, break_when_any_done=False)
    # stagger the episode boundaries of the three trajectories
    done = torch.zeros(3, 10, 1, dtype=torch.bool)
    done[0, 2] = done[0, 6] = done[1, 4] = True
    base["next", "done"] = done
    noise = DomainRandomizedReward(1.0, seed=0)(base)[NOISE]
    segments = {0: [(0, 3), (3, 7), (7, 10)], 1: [(0, 5), (5, 10)], 2: [(0, 10)]}
    for b, bounds in segments.items():
        firsts = []
        for start, stop in bounds:
            piece = noise[b, start:stop]
            assert (piece == piece[:1]).all()
            firsts.append(piece[0])
        for i in range(1, len(firsts)):
            assert (firsts[i] != firsts[i - 1]).all()


def test_dr_offline_without_time_dim_draws_per_element():
    data = TensorDict({AGENT_R: torch.zeros(50, 2, 1), ("next", "done"): torch.zeros(50, 1)}, [50])
    noise = DomainRandomizedReward(1.0, seed=0)(data)[NOISE]
    assert noise.unique().numel() == 100
    torch.testing.assert_close(data[AGENT_R], noise)


def test_dr_zero_scale_is_identity():
    online = rollout(TransformedEnv(nmatrix(), DomainRandomizedReward(0.0, seed=0)))
    torch.testing.assert_close(online[AGENT_R], rollout(nmatrix())[AGENT_R])


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
