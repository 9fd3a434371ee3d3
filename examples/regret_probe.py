"""How much regret the trust region leaves out: finished runs re-estimated with wider estimators.

ERMAS's regret estimate is local by design (the best deviation within ``ermas.trust_region``
nats). Where no exact regret is known (the economy), this script re-estimates the regret of
the final agents of finished runs under each estimator setting of ``settings`` (overrides
of the runs' ``ermas`` node; ``{}`` is the run's own estimator), ``estimates`` times each,
and prints the largest agent regret per run and setting (mean ± s.e. over the estimates) and
its ratio to the setting that found most. Nothing trains and the runs are left untouched.
It probes runs whose ``env`` node builds their environment (the bimatrix and economy
examples' runs); for others, call :func:`~torchrl_ermas.training.probe_regret` with an
``env_fn``.

    python examples/regret_probe.py 'runs=[outputs/economy_tax_policy/<date>/train/*/seed0]'
    python examples/regret_probe.py 'runs=[<run folder>]' settings.wide.trust_region=30
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from torchrl_ermas.training import mean_sem, probe_regret


@dataclass
class ProbeConfig:
    """Schema of the probe.

    Attributes:
        runs: finished run folders (``results.json`` and ``checkpoint.pt``); shell-style
            patterns are expanded.
        settings: name -> overrides of the runs' ``ermas`` node for one estimator.
        estimates: estimates per run and setting (seeds ``seed .. seed + estimates - 1``).
        seed: the first estimate's seed.
        threads: torch threads.
    """

    runs: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    estimates: int = 4
    seed: int = 0
    threads: int = 1


ConfigStore.instance().store(name="regret_probe_schema", node=ProbeConfig)


def run_folders(patterns: list[str]) -> list[Path]:
    """The run folders that ``patterns`` name, in order; a pattern that matches none raises."""
    folders = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"runs: {pattern!r} matches no folder.")
        folders += [Path(match) for match in matches]
    return folders


def validate(cfg: ProbeConfig) -> None:
    """Raises a ``ValueError`` naming the first invalid setting."""
    if not cfg.runs:
        raise ValueError("runs must list at least one finished run folder, e.g. 'runs=[outputs/.../seed0]'.")
    if not cfg.settings:
        raise ValueError("settings must name at least one estimator, e.g. settings.training={}.")
    if not isinstance(cfg.estimates, int) or cfg.estimates < 1:
        raise ValueError(f"estimates must be an int >= 1, got {cfg.estimates!r}.")
    if not isinstance(cfg.threads, int) or cfg.threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {cfg.threads!r}.")


def largest_regret(probe: dict[str, Any]) -> tuple[float, float]:
    """Mean ± s.e. over the estimates of the largest agent regret of each estimate."""
    return mean_sem(max(row) for row in probe["regret"])


def print_table(table: dict[str, dict[str, dict[str, Any]]], settings: list[str]) -> None:
    print("largest agent regret (mean ± s.e. over estimates) [ratio to the largest setting]")
    width = max(len(run) for run in table) + 2
    print("run".ljust(width) + "".join(name.rjust(28) for name in settings))
    for run, probes in table.items():
        means = {name: largest_regret(probes[name]) for name in settings}
        top = max(mean for mean, _ in means.values())
        cells = ""
        for name in settings:
            mean, sem = means[name]
            ratio = f"[{mean / top:.2f}]" if top > 0 else "[—]"
            cells += f"{mean:9.3f} ± {sem:6.3f} {ratio:>8}".rjust(28)
        print(run.ljust(width) + cells)


@hydra.main(version_base="1.3", config_path="configs", config_name="regret_probe")
def main(cfg: ProbeConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(HydraConfig.get().runtime.output_dir)
    seeds = list(range(cfg.seed, cfg.seed + cfg.estimates))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for folder in run_folders(cfg.runs):
        table[str(folder)] = {
            name: probe_regret(
                folder,
                out / "estimators" / f"{len(table)}_{name}",
                ermas=dict(ermas),
                seeds=seeds,
                estimates=cfg.estimates,
            )
            for name, ermas in cfg.settings.items()
        }
    (out / "probe.json").write_text(json.dumps(table, indent=1))
    print_table(table, list(cfg.settings))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
