"""Tests of KLToReference: per-agent KL of a live policy to a frozen snapshot."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    Normal,
    kl_divergence,
)
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import Compose, SerialEnv, TransformedEnv
from torchrl.envs.utils import check_env_specs
from torchrl.modules import MultiAgentMLP, OneHotCategorical, ProbabilisticActor
from torchrl_ermas.envs import NMatrixGameEnv, SequentialBimatrixEnv

from torchrl_ermas.transforms import KLToReference, PlannerRewardGap

KL = ("next", "agents", "kl_ref")
OBS = ("agents", "observation")


def bimatrix_passive(batch=4):
    return SequentialBimatrixEnv(batch, max_steps=5)


def bimatrix_officers(batch=4):
    return SequentialBimatrixEnv(batch, planner="officers", max_steps=5)


def nmatrix(batch=4):
    return NMatrixGameEnv(batch, n_agents=3, grid_size=3, max_steps=5)


ENVS = [bimatrix_passive, bimatrix_officers, nmatrix]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # policy initialisations are reproducible


def obs_dim(env, group="agents"):
    return env.full_observation_spec[group, "observation"].shape[-1]


def make_policy(env, *, share_params=True, dist=Categorical, group="agents"):
    n_agents = env.full_observation_spec[group].shape[-1]
    net = MultiAgentMLP(
        n_agent_inputs=obs_dim(env, group),
        n_agent_outputs=3,
        n_agents=n_agents,
        centralised=False,
        share_params=share_params,
        depth=1,
        num_cells=16,
    )
    module = TensorDictModule(net, [(group, "observation")], [(group, "logits")])
    return ProbabilisticActor(
        module,
        in_keys=[(group, "logits")],
        out_keys=[(group, "action")],
        distribution_class=dist,
        return_log_prob=True,
    )


def perturb(policy, amount=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(amount * torch.randn(param.shape, generator=gen))


def rollout(env, policy, steps=5, seed=0):
    """A rollout of ``policy``; the planner (if it acts) takes random actions."""

    def act(tensordict):
        tensordict.update(env.full_action_spec.rand())
        return policy(tensordict)

    torch.manual_seed(seed)
    env.set_seed(seed)
    return env.rollout(steps, act)


def hand_kl(policy, reference, data):
    """KL(reference || policy) (Eq. 12) at the root observations of ``data``, ``[..., N, 1]``."""
    with torch.no_grad():
        current = policy.get_dist(data.select(OBS))
        ref = reference.get_dist(data.select(OBS))
    return kl_divergence(ref, current).unsqueeze(-1)


# ---------------------------------------------------------------- env checks
@pytest.mark.parametrize("share_params", [True, False])
@pytest.mark.parametrize("make_env", ENVS)
def test_check_env_specs(make_env, share_params):
    env = make_env()
    policy = make_policy(env, share_params=share_params)
    transform = KLToReference(policy)
    perturb(policy)
    check_env_specs(TransformedEnv(env, transform), seed=0)


@pytest.mark.parametrize("batch", [1, (2, 3)])
def test_single_and_multidim_batch(batch):
    env = bimatrix_officers(batch)
    policy = make_policy(env)
    transform = KLToReference(policy)
    perturb(policy)
    env = TransformedEnv(env, transform)
    check_env_specs(env, seed=0)
    data = rollout(env, policy)
    assert data[KL].shape == (*env.batch_size, 5, 2, 1)


def test_compose_and_serial_env():
    base = bimatrix_officers()
    policy = make_policy(base)
    perturb(policy)
    composed = TransformedEnv(base, Compose(PlannerRewardGap(0.5), KLToReference(policy)))
    check_env_specs(composed, seed=0)
    serial = SerialEnv(2, lambda: TransformedEnv(bimatrix_officers(), KLToReference(policy)))
    check_env_specs(serial, seed=0)


def test_planner_group():
    env = nmatrix()
    policy = make_policy(env, group="planner")
    transform = KLToReference(policy, out_key=("planner", "kl_ref"))
    perturb(policy)
    env = TransformedEnv(env, transform)
    check_env_specs(env, seed=0)
    assert rollout(env, policy)["next", "planner", "kl_ref"].shape == (4, 5, 1, 1)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("share_params", [True, False])
@pytest.mark.parametrize("make_env", ENVS)
def test_online_values(make_env, share_params):
    base = make_env()
    policy = make_policy(base, share_params=share_params)
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy)
    env = TransformedEnv(base, transform)
    data = rollout(env, policy)
    torch.testing.assert_close(data[KL], torch.zeros_like(data[KL]))

    perturb(policy)
    data = rollout(env, policy)
    n_agents = base.full_observation_spec["agents"].shape[-1]
    assert data[KL].shape == (4, 5, n_agents, 1)
    assert (data[KL] > 0).all()
    torch.testing.assert_close(data[KL], hand_kl(policy, reference, data))
    # resets write zeros; step_mdp then carries each step's KL to the next root
    torch.testing.assert_close(data["agents", "kl_ref"][:, 0], torch.zeros(4, n_agents, 1))
    torch.testing.assert_close(data["agents", "kl_ref"][:, 1:], data[KL][:, :-1])


@pytest.mark.parametrize("share_params", [True, False])
def test_offline_equals_online(share_params):
    base = nmatrix()
    policy = make_policy(base, share_params=share_params)
    transform = KLToReference(policy)
    perturb(policy)
    online = rollout(TransformedEnv(base, transform), policy)
    offline = online.clone()
    del offline[KL]
    keys = set(offline.keys(True, True))
    offline = transform(offline)
    torch.testing.assert_close(offline[KL], online[KL])
    # nothing but the KL is written (the reference pass does not leak its logits)
    assert set(offline.keys(True, True)) == keys | {KL}
    torch.testing.assert_close(offline["agents", "logits"], online["agents", "logits"])


def test_offline_without_next_writes_at_root():
    env = bimatrix_passive()
    policy = make_policy(env)
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy)
    perturb(policy)
    data = TensorDict({OBS: torch.rand(7, 2, obs_dim(env))}, [7])
    kl = transform(data)["agents", "kl_ref"]
    torch.testing.assert_close(kl, hand_kl(policy, reference, data))
    assert not kl.requires_grad


def test_one_hot_categorical():
    env = nmatrix()
    policy = make_policy(env, dist=OneHotCategorical)
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy)
    perturb(policy)
    data = TensorDict({OBS: torch.rand(6, 3, obs_dim(env))}, [6])
    kl = transform(data)["agents", "kl_ref"]
    logits = reference.get_dist(data.select(OBS)).logits
    with torch.no_grad():
        expected = kl_divergence(
            Categorical(logits=logits),
            Categorical(logits=policy.get_dist(data.select(OBS)).logits),
        )
    torch.testing.assert_close(kl, expected.unsqueeze(-1))
    assert (kl > 0).all()


class NoKLNormal(Distribution):
    """A diagonal normal without a registered KL rule (forces the Monte-Carlo estimate)."""

    arg_constraints = {}

    def __init__(self, loc, scale):
        self.base = Independent(Normal(loc, scale), 1)
        super().__init__(self.base.batch_shape, self.base.event_shape, validate_args=False)

    def sample(self, sample_shape=()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


def test_monte_carlo_fallback():
    env = bimatrix_passive()
    net = MultiAgentMLP(
        n_agent_inputs=obs_dim(env),
        n_agent_outputs=4,
        n_agents=2,
        centralised=False,
        share_params=True,
        depth=1,
        num_cells=16,
    )
    module = TensorDictModule(
        nn.Sequential(net, NormalParamExtractor()),
        in_keys=[OBS],
        out_keys=[("agents", "loc"), ("agents", "scale")],
    )
    policy = ProbabilisticActor(
        module,
        in_keys={"loc": ("agents", "loc"), "scale": ("agents", "scale")},
        out_keys=[("agents", "action")],
        distribution_class=NoKLNormal,
    )
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy, num_samples=20_000)
    perturb(policy, 0.3)
    data = TensorDict({OBS: torch.rand(5, 2, obs_dim(env))}, [5])
    torch.manual_seed(0)
    kl = transform(data)["agents", "kl_ref"]
    with torch.no_grad():
        cur, ref = policy.get_dist(data.select(OBS)), reference.get_dist(data.select(OBS))
    expected = kl_divergence(ref.base, cur.base).unsqueeze(-1)
    torch.testing.assert_close(kl, expected, atol=0.03, rtol=0.05)
    assert (expected > 0.01).all()


# ---------------------------------------------------------------- reference management
def test_reference_is_a_frozen_snapshot():
    env = bimatrix_passive()
    policy = make_policy(env)
    transform = KLToReference(policy)
    snapshot = transform.reference_params.clone()
    perturb(policy)
    assert (transform.reference_params == snapshot).all()
    # the live policy is not a submodule; the reference is buffers only
    assert transform.policy is policy
    assert not list(transform.parameters())
    assert not any(module is policy for module in transform.modules())
    assert set(transform.state_dict()) == {
        f"_reference.{k}" for k in transform.reference_params.flatten_keys(".").keys()
    }

    data = TensorDict({OBS: torch.rand(8, 2, obs_dim(env))}, [8])
    assert (transform(data.clone())["agents", "kl_ref"] > 0).all()
    transform.update_reference()
    torch.testing.assert_close(transform(data.clone())["agents", "kl_ref"], torch.zeros(8, 2, 1))
    ref_ptrs = {t.data_ptr() for t in transform.reference_params.values(True, True)}
    assert ref_ptrs.isdisjoint(p.data_ptr() for p in policy.parameters())
    transform.update_reference(snapshot)
    assert (transform.reference_params == snapshot).all()


def test_reference_params_argument():
    env = bimatrix_passive()
    policy, other = make_policy(env, share_params=False), make_policy(env, share_params=False)
    transform = KLToReference(policy, reference_params=TensorDict.from_module(other))
    data = TensorDict({OBS: torch.rand(8, 2, obs_dim(env))}, [8])
    torch.testing.assert_close(transform(data.clone())["agents", "kl_ref"], hand_kl(policy, other, data))


def test_references_stacked_per_world():
    """References stacked on a leading dim W: entry w of data [W, ...] is measured against
    reference w, exactly as a transform holding reference w alone measures it."""
    env = bimatrix_passive()
    policy = make_policy(env, share_params=False)
    others = [make_policy(env, share_params=False) for _ in range(3)]
    for index, other in enumerate(others):
        perturb(other, seed=index)
    transform = KLToReference(policy)
    transform.update_reference(torch.stack([TensorDict.from_module(other).data for other in others]))
    data = TensorDict({OBS: torch.rand(3, 8, 2, obs_dim(env))}, [3, 8])
    kl = transform(data.clone())["agents", "kl_ref"]
    for world, other in enumerate(others):
        torch.testing.assert_close(kl[world], hand_kl(policy, other, data[world]))
    transform.update_reference()  # back to one reference
    torch.testing.assert_close(transform(data.clone())["agents", "kl_ref"], torch.zeros(3, 8, 2, 1))
    with pytest.raises(ValueError, match="stacked on one leading dim"):
        transform.update_reference(TensorDict.from_module(policy).data.expand(2, 3).clone())


# ---------------------------------------------------------------- pipelines
def test_replay_buffer_transform():
    base = bimatrix_officers()
    policy = make_policy(base)
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy)
    perturb(policy)
    data = rollout(base, policy).reshape(-1)
    rb = ReplayBuffer(storage=LazyTensorStorage(64), transform=transform, batch_size=8)
    rb.extend(data)
    sample = rb.sample()
    torch.testing.assert_close(sample[KL], hand_kl(policy, reference, sample))


# torchrl 0.14 warns on importing its collectors, from a frame the pyproject filters miss
@pytest.mark.filterwarnings("ignore:Creating .*WeightUpdater:DeprecationWarning")
def test_collector_postproc():
    from torchrl.collectors import Collector

    base = bimatrix_passive()
    policy = make_policy(base)
    reference = copy.deepcopy(policy)
    transform = KLToReference(policy)
    perturb(policy)
    collector = Collector(base, policy, frames_per_batch=40, total_frames=40, postproc=transform)
    for batch in collector:
        assert batch[KL].shape == (4, 10, 2, 1)
        torch.testing.assert_close(batch[KL], hand_kl(policy, reference, batch))
    collector.shutdown()


# ---------------------------------------------------------------- bad input
def test_bad_inputs():
    env = bimatrix_passive()
    policy = make_policy(env)
    with pytest.raises(ValueError, match="policy must"):
        KLToReference(policy.module[0])
    with pytest.raises(ValueError, match="out_key must"):
        KLToReference(policy, out_key="kl_ref")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_samples must"):
            KLToReference(policy, num_samples=bad)
    other = make_policy(env, share_params=False)
    for bad in (TensorDict.from_module(other), {"weight": torch.zeros(1)}):
        with pytest.raises(ValueError, match="reference_params must"):
            KLToReference(policy, reference_params=bad)
    with pytest.raises(ValueError, match="reference_params must"):
        KLToReference(policy).update_reference(TensorDict.from_module(other))


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
