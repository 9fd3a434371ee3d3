"""The regret of a finished run's final agents, re-estimated with other estimator settings.

ERMAS's trust region makes its regret estimate local: ``epsilon`` bounds what a deviation
within ``ermas.trust_region`` nats can gain. Where no exact regret is known (the economy,
VMAS), a probe with a wider trust region, more deviation steps and more environments
estimates how much larger the regret of the same agents is, which tells whether epsilon
sits on the right scale and what the training estimate misses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torchrl.envs import EnvBase

from ..validation import check_int
from .checkpoint import component_state, load_checkpoint
from .config import as_config
from .experiments import with_overrides
from .trainer import ErmasTrainer

#: the components of a finished run that the probe's estimate uses
PROBED_COMPONENTS = ("agent_policy", "agent_critic", "planner_policy")


def probe_regret(
    run_dir: str | Path,
    output_dir: str | Path,
    *,
    ermas: dict[str, Any] | None = None,
    estimates: int = 4,
    seeds: Sequence[int] | None = None,
    env_fn: Callable[[int, torch.device], EnvBase] | None = None,
) -> dict[str, Any]:
    """Estimates the regret of the final agents of the run in ``run_dir`` ``estimates`` times.

    The run's ``results.json`` gives its configuration and its ``checkpoint.pt`` the agents'
    policy and critic, the planner (learned or fixed, e.g. a warmed-up Saez planner) and the
    environment's per-environment state (curricula). The estimator is the run's
    ``ermas`` settings with ``ermas`` (e.g. ``{"trust_region": 20.0, "deviation_steps": 10}``)
    applied, whatever the run's variant; nothing trains and ``run_dir`` is left untouched.
    ``output_dir`` is the probe's own (empty) folder.

    Returns the settings and, per estimate, each agent's ``regret``, ``kl`` and
    ``current_return``, with their means over the estimates.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_ermas.training import ErmasTrainer
        >>> run = tempfile.mkdtemp()
        >>> _ = ErmasTrainer({"iterations": 2, "num_envs": 8, "progress": False, "variant": "marl",
        ...                   "output_dir": run, "logger": {"backend": ""},
        ...                   "env": {"_target_": "torchrl_ermas.envs.SequentialBimatrixEnv",
        ...                           "max_steps": 20}}).train()
        >>> probe = probe_regret(run, Path(tempfile.mkdtemp()) / "probe", estimates=2,
        ...                      ermas={"trust_region": 10.0, "deviation_steps": 2, "regret_envs": 8})
        >>> probe["ermas"]["trust_region"], len(probe["regret"]), len(probe["mean_regret"])
        (10.0, 2, 2)
    """
    check_int("estimates", estimates, 1)
    seeds = list(range(estimates)) if seeds is None else list(seeds)
    if len(seeds) != estimates:
        raise ValueError(f"seeds must hold one seed per estimate ({estimates}), got {len(seeds)}.")
    run_dir = Path(run_dir)
    try:
        stored = json.loads((run_dir / "results.json").read_text())
        state = load_checkpoint(run_dir / "checkpoint.pt")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"run_dir {str(run_dir)!r} must hold a finished run (results.json and checkpoint.pt): {err}"
        ) from None
    run_cfg = as_config(stored["config"])
    overrides = {f"ermas.{key}": value for key, value in (ermas or {}).items()}
    cfg = with_overrides(
        run_cfg,
        {
            "variant": "ermas",
            "iterations": 1,
            "output_dir": str(output_dir),
            "resume": False,
            "overwrite": False,
            "progress": False,
            "logger.backend": "",
            "planner_checkpoint": None,
            "agents_checkpoint": None,
            "ermas.warmup_iters": 0,
            **overrides,
        },
    )
    trainer = ErmasTrainer(cfg, env_fn=env_fn)
    for name in PROBED_COMPONENTS:
        own = component_state(state["modules"], name)
        if own:
            trainer.modules[name].load_state_dict(own)
    trainer.env.base_env.load_state_dict(state.get("env", {}))
    rows = [trainer.estimate_regret(seed) for seed in seeds]
    probe: dict[str, Any] = {"run_dir": str(run_dir), "ermas": asdict(cfg.ermas), "seeds": seeds}
    for name in ("regret", "kl", "current_return"):
        values = torch.stack([row[name] for row in rows])  # [estimates, n_agents]
        probe[name] = values.tolist()
        probe[f"mean_{name}"] = values.mean(0).tolist()
    return probe
