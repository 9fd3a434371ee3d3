"""Tests of the population trainer: runs as a batch dimension.

Populations are tiny (4 environments per run, 10 steps, hidden 16), as in test_training.py,
whose config helper and results-schema check they reuse.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from test_training import assert_results_schema, make_cfg, without_times
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.modules import TanhNormal

from torchrl_ermas.training import ErmasTrainer, PopulationTrainer, check_population, load_checkpoint, run_many
from torchrl_ermas.training.config import PPOConfig, as_config
from torchrl_ermas.training.models import VmappableTanhNormal, make_policy
from torchrl_ermas.training.population import populations
from torchrl_ermas.transforms import PlannerFromAgents, TimeLimitAsTruncated


def population_cfgs(root: Path, **per_run: dict) -> list[dict]:
    """Three runs (marl, fixed_lambda, marl with another agents' lr), ``per_run[f"run{r}"]``
    overriding run ``r``'s settings."""
    runs = [
        {"variant": "marl", "seed": 0},
        {"variant": "fixed_lambda", "seed": 1, "ermas": {"lambda_init": 2.0}, "reward": {"q": 0.5}},
        {"variant": "marl", "seed": 2, "agents": {"lr": 1e-2}, "planner": {"lr": 3e-3}},
    ]
    return [
        make_cfg(root / f"run{r}", **{**overrides, **per_run.get(f"run{r}", {})}) for r, overrides in enumerate(runs)
    ]


def final_states(population: PopulationTrainer) -> list[dict[str, torch.Tensor]]:
    return [run.modules.state_dict() for run in population.runs]


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("variant", "q"),
    [("marl", 0.0), ("fixed_lambda", 0.0), ("fixed_lambda", 0.5), ("marl", -0.3), ("ermas", 0.0), ("ermas", 0.5)],
)
def test_population_of_one_replays_the_trainer(tmp_path, variant, q):
    estimate = {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2, "deviation_steps": 1}
    annealed = {"agents": {"epochs": 2, "anneal_start": 0.5}, "planner": {"anneal_start": 0.0}}
    overrides = {"variant": variant, "reward": {"q": q}, **annealed, "ermas": estimate}
    alone = ErmasTrainer(make_cfg(tmp_path / "alone", **overrides))
    results = alone.train()
    population = PopulationTrainer([make_cfg(tmp_path / "population", **overrides)])
    (pop_results,) = population.train()
    assert without_times(pop_results["history"]) == without_times(results["history"])
    assert pop_results["final"] == results["final"]
    assert states_equal(population.runs[0].modules.state_dict(), alone.modules.state_dict())
    mine, theirs = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("population", "alone"))
    for group in theirs["optimizers"]:
        assert mine["optimizers"][group]["param_groups"] == theirs["optimizers"][group]["param_groups"]
        for index, state in theirs["optimizers"][group]["state"].items():
            assert states_equal(mine["optimizers"][group]["state"][index], state)


ESTIMATE = {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2}  # shared by every run


def ermas_runs(count: int) -> dict[str, dict]:
    """Overrides of :func:`population_cfgs` that make the last ``count`` runs ``ermas`` runs
    (with an estimate at every iteration); two or more estimate in one batch."""
    extra = {
        "run0": {"ermas": ESTIMATE},
        "run1": {"ermas": {**ESTIMATE, "lambda_init": 2.0}},
        "run2": {"ermas": ESTIMATE},
    }
    for r in range(3 - count, 3):
        extra[f"run{r}"]["variant"] = "ermas"
        extra[f"run{r}"]["ermas"] = {**extra[f"run{r}"]["ermas"], "epsilon": 0.5 * r}
    return extra


@pytest.mark.parametrize("reward", [{"dr_scale": 0.5}, {"rr_eta": 1.0}])
def test_population_of_one_replays_dr_and_rr_runs(tmp_path, reward):
    alone = ErmasTrainer(make_cfg(tmp_path / "alone", variant="marl", reward=reward))
    results = alone.train()
    (pop_results,) = PopulationTrainer([make_cfg(tmp_path / "population", variant="marl", reward=reward)]).train()
    assert without_times(pop_results["history"]) == without_times(results["history"])
    assert states_equal(
        load_checkpoint(tmp_path / "population" / "checkpoint.pt")["modules"], alone.modules.state_dict()
    )


def test_dr_and_rr_runs_do_not_talk_to_the_others(tmp_path):
    """A DR run and an RR run in one population with plain runs (per-environment noise
    scales and per-run etas): the plain runs end bit-identical to a population without
    them, and the DR and RR runs differ from plain ones."""
    plain = {"run0": {"variant": "marl"}, "run1": {"variant": "marl"}, "run2": {"variant": "marl"}}
    reference = PopulationTrainer(population_cfgs(tmp_path / "a", **plain))
    reference.train()
    robust = {
        **plain,
        "run1": {"variant": "marl", "reward": {"dr_scale": 0.5}},
        "run2": {"variant": "marl", "reward": {"rr_eta": 1.0}},
    }
    mixed = PopulationTrainer(population_cfgs(tmp_path / "b", **robust))
    mixed.train()
    (a0, a1, a2), (b0, b1, b2) = final_states(reference), final_states(mixed)
    assert states_equal(a0, b0)
    assert not states_equal(a1, b1) and not states_equal(a2, b2)
    assert mixed.groups[0].rr.eta.tolist() == [0.0, 0.0, 1.0]


def test_ppo_deviations_train_at_their_own_run_s_lr(tmp_path):
    """With PPO deviations each run's worlds train at its own ``agents.lr``: another run's
    rate (here the first run's, which leads the batched estimator) leaves them bit-identical
    while the run holds the population's highest rate."""
    ppo = {**ESTIMATE, "regret_envs": 8, "trust_region": 3.0, "deviation_optimizer": "ppo"}

    def population(root: Path, lr0: float) -> PopulationTrainer:
        cfgs = [
            make_cfg(root / f"run{r}", variant="ermas", seed=r, agents={"lr": lr, "epochs": 4}, ermas=ppo)
            for r, lr in enumerate((lr0, 0.1))
        ]
        return PopulationTrainer(cfgs)

    reference, perturbed = population(tmp_path / "a", 0.02), population(tmp_path / "b", 0.05)
    assert reference.estimator.step.lr.tolist() == [0.02, 0.02, 0.1, 0.1]  # one rate per world
    reference.train()
    perturbed.train()
    assert any(regret != 0 for row in reference.runs[1].history["regret"] for regret in row)
    assert reference.runs[1].history["regret"] == perturbed.runs[1].history["regret"]
    assert states_equal(final_states(reference)[1], final_states(perturbed)[1])
    assert reference.runs[0].history["regret"] != perturbed.runs[0].history["regret"]


@pytest.mark.parametrize("n_ermas", [0, 1, 3])
def test_runs_do_not_talk_to_each_other(tmp_path, n_ermas):
    """Perturbing run 1 (its seed and reality gap) leaves the other runs bit-identical, also
    when their regrets are estimated in one batch with run 1's (``n_ermas=3``)."""
    extra = ermas_runs(n_ermas)
    reference = PopulationTrainer(population_cfgs(tmp_path / "a", **extra))
    reference.train()
    perturbed_run1 = {**extra["run1"], "seed": 7, "reward": {"q": -1.0}}
    perturbed = PopulationTrainer(population_cfgs(tmp_path / "b", **{**extra, "run1": perturbed_run1}))
    perturbed.train()
    (a0, a1, a2), (b0, b1, b2) = final_states(reference), final_states(perturbed)
    assert states_equal(a0, b0) and states_equal(a2, b2)
    assert not states_equal(a1, b1)
    assert reference.runs[0].history["planner_reward"] == perturbed.runs[0].history["planner_reward"]
    if n_ermas:  # the estimate ran and moved the multipliers, identically
        assert reference.runs[2].history["regret"][-1] is not None
        assert reference.runs[2].history["lambda"] == perturbed.runs[2].history["lambda"]
    if n_ermas == 3:
        assert reference.estimator is not None  # the batched estimate
        assert all("estimator" not in vars(run) for run in reference.runs)  # none built its own
        assert reference.runs[0].history["regret"] == perturbed.runs[0].history["regret"]
        assert reference.runs[1].history["regret"] != perturbed.runs[1].history["regret"]


def test_each_run_writes_the_layout_of_a_run_alone(tmp_path):
    cfgs = population_cfgs(tmp_path)
    results = PopulationTrainer(cfgs).train()
    for cfg, run_results in zip(cfgs, results):
        out = Path(cfg["output_dir"])
        assert_results_schema(run_results, cfg, out)
        resumed = ErmasTrainer({**cfg, "resume": True})  # the single-run trainer loads it
        assert resumed.start_iteration == cfg["iterations"]
        assert resumed.history == run_results["history"]
        assert json.loads((out / "results.json").read_text())["config"]["output_dir"] == cfg["output_dir"]
    lambdas = [r["final"]["lambda"] for r in results]
    assert lambdas == [None, [2.0, 2.0], None]


@pytest.mark.parametrize("n_ermas", [0, 2])
def test_resume_reproduces_the_uninterrupted_population(tmp_path, n_ermas):
    extra = ermas_runs(n_ermas)
    whole = PopulationTrainer(population_cfgs(tmp_path / "whole", **extra))
    whole.train()
    cut = population_cfgs(tmp_path / "cut", **{r: {**extra[r], "iterations": 2} for r in extra})
    PopulationTrainer(cut).train()  # stops after iteration 1 with every run's checkpoint
    resumed = PopulationTrainer([{**cfg, "resume": True} for cfg in population_cfgs(tmp_path / "cut", **extra)])
    assert resumed.start_iteration == 2
    resumed.train()
    for run, other in zip(whole.runs, resumed.runs):
        assert without_times(run.history) == without_times(other.history)
        assert states_equal(run.modules.state_dict(), other.modules.state_dict())


def test_resume_refuses_runs_at_different_iterations(tmp_path):
    cfgs = population_cfgs(tmp_path)
    PopulationTrainer(cfgs).train()
    folder = Path(cfgs[1]["output_dir"])
    shutil.copy(folder / "checkpoint.prev.pt", folder / "checkpoint.pt")
    with pytest.raises(ValueError, match="different iterations"):
        PopulationTrainer([{**cfg, "resume": True} for cfg in cfgs])


def test_run_many_resumes_runs_at_different_iterations_alone(tmp_path):
    """A kill between the runs' checkpoint writes: run_many resumes each run from its own
    checkpoint instead of refusing the grid."""
    cfgs = population_cfgs(tmp_path)
    finished = PopulationTrainer(cfgs).train()
    folder = Path(cfgs[1]["output_dir"])
    shutil.copy(folder / "checkpoint.prev.pt", folder / "checkpoint.pt")  # run 1 one iteration behind
    results = run_many([{**cfg, "resume": True} for cfg in cfgs], population_size=3)
    assert [len(r["history"]["planner_reward"]) for r in results] == [3, 3, 3]
    for index in (0, 2):  # already finished: nothing retrained
        assert results[index]["history"] == finished[index]["history"]
    assert results[1]["history"]["planner_reward"][:2] == finished[1]["history"]["planner_reward"][:2]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num_envs": 8}, "num_envs"),
        ({"agents": {"epochs": 3}}, "agents.epochs"),
        ({"reward": {"dr_resample": "step"}}, "reward.dr_resample"),
        ({"env": {"max_steps": 20}}, "env.max_steps"),
    ],
)
def test_refuses_runs_that_differ_elsewhere(tmp_path, override, key):
    cfgs = population_cfgs(tmp_path, run2=override)
    with pytest.raises(ValueError, match=rf"{key} is .* in run 0 and .* in run 2"):
        PopulationTrainer(cfgs)
    assert not (tmp_path / "run0").exists()  # refused before any run's folder is touched


SAEZ = {"_target_": "torchrl_ermas.envs.economy.SaezPlanner"}


@pytest.mark.parametrize(
    "run1, reason",
    [
        ({"variant": "ermas", "ermas": {"meta_scale": 0.2}}, r"ermas.meta_scale=0.2 \(the meta-gradient term\)"),
        ({"train_planner": False, "fixed_planner": SAEZ}, r"fixed_planner is .*SaezPlanner.*, not a network"),
        ({"logger": {"backend": "wandb"}}, r"logger.backend is 'wandb', which keeps one active run per process"),
    ],
)
def test_runs_that_train_alone_are_refused_and_dealt_alone(tmp_path, run1, reason):
    """The meta-gradient term, a hand-written fixed planner (the Saez planner steps on
    its own data, which vmap cannot trace) and a wandb logger keep a run out of populations."""
    cfgs = population_cfgs(tmp_path, run1=run1)
    with pytest.raises(ValueError, match=rf"run 1 trains alone \(ErmasTrainer\): {reason}"):
        PopulationTrainer(cfgs)
    assert not (tmp_path / "run0").exists()
    assert populations([as_config(cfg) for cfg in cfgs], size=32) == [[0, 2], [1]]


def navigation_with_regulator(cfg, batch_size: int, device: torch.device):
    """VMAS navigation (continuous actions) with a regulator planner: an ``env_factory``."""
    base = VmasEnv("navigation", num_envs=batch_size, n_agents=2, max_steps=10, device=device)
    regulator = PlannerFromAgents("speed", features=(2, 4))
    return TransformedEnv(base, Compose(TimeLimitAsTruncated(base.max_steps), regulator))


@pytest.mark.parametrize("sample_shape", [(), (4,)])
def test_vmappable_tanh_normal_is_torchrl_s_outside_vmap(sample_shape):
    """Samples, log-probabilities and gradients equal TorchRL's TanhNormal bit for bit
    (also after a log_prob on the same distribution, as in the loss), so a continuous run
    alone keeps its numbers."""
    raw, action = torch.randn(16, 2, 4), torch.rand(16, 2, 2) * 1.8 - 0.9
    outputs = []
    for distribution in (TanhNormal, VmappableTanhNormal):
        params = raw.clone().requires_grad_()
        loc, scale = params[..., :2], torch.nn.functional.softplus(params[..., 2:]) + 1e-4
        dist = distribution(loc, scale, low=-torch.ones(2), high=torch.ones(2))
        action_log_prob = dist.log_prob(action)  # first, as in the loss
        torch.manual_seed(0)
        sample, log_prob = dist.rsample_and_log_prob(sample_shape)
        (action_log_prob.sum() - log_prob.sum() + sample.sum()).backward()
        outputs.append((sample.detach(), log_prob.detach(), params.grad))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_continuous_policy_acts_on_batches_of_any_size():
    """The policy keeps one environment's bounds (not the batch's), so that the regret
    estimator's worlds and a population, whose batches differ from the policy's
    environment, act within them; bounds other than [-1, 1] are rescaled by the TanhNormal."""
    spec = Composite(
        agents=Composite(
            action=Bounded(
                low=torch.tensor([0.0, -3.0]).expand(4, 3, 2), high=torch.tensor([2.0, 1.0]).expand(4, 3, 2)
            ),
            shape=(4, 3),
        ),
        shape=(4,),
    )
    observation = Composite(agents=Composite(observation=Unbounded(shape=(4, 3, 5)), shape=(4, 3)), shape=(4,))
    env = SimpleNamespace(full_action_spec=spec, full_observation_spec=observation, batch_size=torch.Size([4]))
    policy = make_policy(env, "agents", PPOConfig(hidden=8), torch.device("cpu"))
    data = TensorDict({("agents", "observation"): torch.randn(6, 3, 5)}, [6])
    action = policy(data)["agents", "action"]
    assert action.shape == (6, 3, 2)
    dist = policy.get_dist(data)
    assert torch.equal(dist.low, torch.tensor([[0.0, -3.0]] * 3))  # one environment's [n, D]
    assert torch.equal(dist.high, torch.tensor([[2.0, 1.0]] * 3))
    assert ((action >= dist.low) & (action <= dist.high)).all()


def test_continuous_policy_refuses_bounds_that_differ_between_environments():
    low = torch.zeros(4, 3, 2)
    low[1] = -1.0
    spec = Composite(
        agents=Composite(action=Bounded(low=low, high=torch.ones(4, 3, 2), shape=(4, 3, 2)), shape=(4, 3)),
        shape=(4,),
    )
    observation = Composite(agents=Composite(observation=Unbounded(shape=(4, 3, 5)), shape=(4, 3)), shape=(4,))
    env = SimpleNamespace(full_action_spec=spec, full_observation_spec=observation, batch_size=torch.Size([4]))
    with pytest.raises(ValueError, match=r"same bounds in every environment of the batch; its low bound differs"):
        make_policy(env, "agents", PPOConfig(hidden=8), torch.device("cpu"))


def navigation_cfgs(root: Path, *variants: str) -> list[dict]:
    """Runs on :func:`navigation_with_regulator`, one per variant (seeds 0, 1, ...; the
    ``ermas`` ones estimate every iteration, with an epsilon of their own)."""
    estimate = {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2, "deviation_steps": 1}
    return [
        make_cfg(root / f"run{r}", variant=variant, seed=r, iterations=2, ermas={**estimate, "epsilon": 0.1 * r})
        for r, variant in enumerate(variants)
    ]


def navigation_env(batch_size: int, device: torch.device):
    return navigation_with_regulator(None, batch_size, device)


@pytest.mark.parametrize("variant", ["marl", "ermas"])
def test_population_of_one_replays_continuous_actions(tmp_path, variant):
    """Continuous (TanhNormal) actions and sampled entropies drawn under vmap: a population
    of one replays the run alone bit for bit."""
    (cfg,) = navigation_cfgs(tmp_path / "population", variant)
    alone = ErmasTrainer({**cfg, "output_dir": str(tmp_path / "alone")}, env_fn=navigation_env)
    results = alone.train()
    population = PopulationTrainer([cfg], env_fn=navigation_env)
    (pop_results,) = population.train()
    assert without_times(pop_results["history"]) == without_times(results["history"])
    assert states_equal(population.runs[0].modules.state_dict(), alone.modules.state_dict())


def test_continuous_runs_batch_without_cross_talk(tmp_path):
    """Continuous runs train as one population (the ERMAS runs estimating in one batch),
    and perturbing the last run's seed leaves the other runs bit-identical; run_many
    batches them into that population."""
    variants = ("marl", "ermas", "ermas")
    reference = PopulationTrainer(navigation_cfgs(tmp_path / "a", *variants), env_fn=navigation_env)
    results = reference.train()
    assert reference.estimator is not None
    assert all(math.isfinite(regret) for result in results[1:] for regret in result["final"]["regret"])
    cfgs = navigation_cfgs(tmp_path / "b", *variants)
    cfgs[2]["seed"] = 7
    perturbed = PopulationTrainer(cfgs, env_fn=navigation_env)
    perturbed.train()
    (a0, a1, a2), (b0, b1, b2) = final_states(reference), final_states(perturbed)
    assert states_equal(a0, b0) and states_equal(a1, b1)
    assert not states_equal(a2, b2)
    grouped = run_many(
        navigation_cfgs(tmp_path / "c", *variants), workers=1, population_size=3, env_factory=navigation_with_regulator
    )
    for mine, theirs in zip(grouped, results):
        assert without_times(mine["history"]) == without_times(theirs["history"])


def test_refuses_runs_that_share_a_folder(tmp_path):
    """Two runs writing to one folder would overwrite each other's checkpoints and results."""
    cfgs = population_cfgs(tmp_path)
    cfgs[2]["output_dir"] = str(tmp_path / "run1" / ".." / "run0")
    message = r"every run needs an output_dir of its own, but runs 0 and 2 both write to"
    with pytest.raises(ValueError, match=message):
        PopulationTrainer(cfgs)
    with pytest.raises(ValueError, match=message):
        run_many(cfgs, population_size=1)
    assert not any(tmp_path.iterdir())  # refused before any run started


def test_refuses_empty_populations(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        check_population([])
    check_population([as_config(cfg) for cfg in population_cfgs(tmp_path)])  # per-run keys only


@pytest.mark.parametrize("variant", ["marl", "fixed_lambda"])
def test_population_of_one_replays_a_frozen_planner_run(tmp_path, variant):
    # train_planner=False: fixed_lambda fits the planner critic alone, marl has none
    overrides = {"variant": variant, "train_planner": False, "reward": {"q": 0.5}}
    alone = ErmasTrainer(make_cfg(tmp_path / "alone", **overrides))
    results = alone.train()
    (pop_results,) = PopulationTrainer([make_cfg(tmp_path / "population", **overrides)]).train()
    assert without_times(pop_results["history"]) == without_times(results["history"])
    assert states_equal(
        load_checkpoint(tmp_path / "population" / "checkpoint.pt")["modules"], alone.modules.state_dict()
    )


def test_each_run_plays_its_own_frozen_planner(tmp_path):
    sources = population_cfgs(tmp_path / "sources")[:2]
    PopulationTrainer(sources).train()
    transfer = [
        make_cfg(
            tmp_path / f"transfer{r}",
            variant=variant,
            seed=10 + r,
            train_planner=False,
            planner_checkpoint=str(Path(source["output_dir"]) / "checkpoint.pt"),
        )
        for r, (variant, source) in enumerate(zip(("fixed_lambda", "marl"), sources))
    ]
    population = PopulationTrainer(transfer)
    population.train()
    for run, source in zip(population.runs, sources):
        stored = load_checkpoint(Path(source["output_dir"]) / "checkpoint.pt")["modules"]
        planner = {k.removeprefix("planner_policy."): v for k, v in stored.items() if k.startswith("planner_policy.")}
        assert states_equal(run.planner_policy.state_dict(), planner)


def trained_steps(trainer: ErmasTrainer) -> dict:
    """A post hook: the number of iterations the run trained."""
    return {"trained_iterations": len(trainer.history["planner_reward"])}


def test_run_many_trains_compatible_runs_as_populations(tmp_path):
    """Runs that differ in per-run values batch, in chunks of population_size; a run with
    the meta-gradient term trains alone; results come back in input order."""
    meta = {"variant": "ermas", "ermas": {"meta_scale": 0.2}}
    cfgs = [*population_cfgs(tmp_path / "many"), make_cfg(tmp_path / "many" / "meta", **meta)]
    results = run_many(cfgs, workers=1, population_size=2, post=trained_steps)
    assert [r["config"]["output_dir"] for r in results] == [cfg["output_dir"] for cfg in cfgs]
    assert all(r["final"]["trained_iterations"] == 3 for r in results)
    alone = [{**cfg, "output_dir": str(tmp_path / "alone" / str(i))} for i, cfg in enumerate(cfgs)]
    # runs dealt to two chunks in turn, variant by variant (fixed_lambda: 1, marl: 0 and 2)
    run1, run2 = PopulationTrainer(alone[1:3]).train()  # the first chunk: runs 1 and 2
    run0, meta_run = (ErmasTrainer(cfg).train() for cfg in (alone[0], alone[3]))  # a chunk of one, the meta run
    expected = [run0, run1, run2, meta_run]
    for result, reference in zip(results, expected):
        assert without_times(result["history"]) == without_times(reference["history"])
        assert {k: v for k, v in result["final"].items() if k != "trained_iterations"} == reference["final"]


def test_run_many_population_size_must_be_a_positive_int(tmp_path):
    with pytest.raises(ValueError, match="population_size must be an int >= 1"):
        run_many([make_cfg(tmp_path)], population_size=0)


def _tail_means(histories: list[dict], key: str, window: int) -> torch.Tensor:
    """Per run, the mean of the last ``window`` iterations of ``key`` (agents: combined)."""
    return torch.tensor([torch.tensor(h[key][-window:], dtype=torch.float64).sum(-1).mean() for h in histories])


@pytest.mark.parametrize(("planner_mode", "variant"), [("passive", "marl"), ("officers", "marl"), ("passive", "ermas")])
def test_a_run_in_a_population_learns_as_it_does_alone(tmp_path, planner_mode, variant):
    """Statistically indistinguishable from the same runs trained alone (16 seeds), with a
    passive planner and with one that acts and learns, and for ERMAS runs whose regrets are
    estimated in one batch: the final planner and agent rewards agree within 3 standard
    errors of their difference, and both moved away from their start by more than that
    (they learn the same thing); the ERMAS runs' mean regret estimates and multipliers agree
    within 3 standard errors too."""
    settings = {"variant": variant, "iterations": 12, "num_envs": 8, "planner_mode": planner_mode}
    ppo = {"lr": 1e-2, "epochs": 2, "minibatches": 2, "hidden": 16}
    settings.update(agents=ppo, planner=ppo)
    cfgs = [make_cfg(tmp_path / "population" / str(s), seed=s, **settings) for s in range(16)]
    together = [r["history"] for r in PopulationTrainer(cfgs).train()]
    alone = [ErmasTrainer({**c, "output_dir": c["output_dir"] + "-alone"}).train()["history"] for c in cfgs]
    for key in ("regret", "lambda") if variant == "ermas" else ():
        means = [
            torch.tensor([torch.tensor([r for r in h[key] if r is not None]).mean() for h in hs])
            for hs in (together, alone)
        ]
        se = (means[0].var() / 16 + means[1].var() / 16).sqrt()
        assert (means[0].mean() - means[1].mean()).abs() <= 3 * se, (key, *means)
    for key in ("planner_reward", "agent_reward"):
        start = _tail_means([{key: h[key][:3]} for h in alone], key, 3)
        final_together, final_alone = _tail_means(together, key, 3), _tail_means(alone, key, 3)
        se = (final_together.var() / 16 + final_alone.var() / 16).sqrt()
        assert (final_together.mean() - final_alone.mean()).abs() <= 3 * se, (key, final_together, final_alone)
        for final in (final_together, final_alone):
            moved = final - start
            assert moved.mean().abs() > 3 * moved.std() / 16**0.5, (key, final, start)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_a_population_with_an_ermas_run_trains_on_its_device(tmp_path, device):
    """The same code on CPU and CUDA: a population of a MARL and an ERMAS run trains on
    ``device`` (every parameter and optimizer state stays there), the ERMAS run estimates
    its regret and moves lambda, and each checkpoint loads with ``weights_only`` and
    resumes its run on the device."""
    estimate = {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2}
    cfgs = population_cfgs(
        tmp_path,
        run0={"device": device, "ermas": estimate},
        run1={"device": device, "variant": "ermas", "ermas": {**estimate, "lambda_init": 2.0}},
        run2={"device": device, "ermas": estimate},
    )
    population = PopulationTrainer(cfgs)
    results = population.train()
    for run in population.runs:
        assert all(p.device.type == device for p in run.modules.parameters())
        for optimizer in run.optimizers.values():
            for state in optimizer.state.values():
                assert all(v.device.type == device for v in state.values() if torch.is_tensor(v))
    ermas = results[1]
    assert all(r is not None and all(map(math.isfinite, r)) for r in ermas["history"]["regret"])
    assert ermas["history"]["lambda"][-1] != [2.0, 2.0]
    for cfg, run_results in zip(cfgs, results):
        checkpoint = torch.load(Path(cfg["output_dir"]) / "checkpoint.pt", weights_only=True, map_location="cpu")
        assert checkpoint["iteration"] == cfg["iterations"]  # the next iteration to run
        resumed = ErmasTrainer({**cfg, "resume": True, "iterations": cfg["iterations"] + 1})
        assert resumed.history == run_results["history"]
        assert len(resumed.train()["history"]["planner_reward"]) == cfg["iterations"] + 1
