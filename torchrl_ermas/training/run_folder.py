"""The folder of one training run, and the checks that keep runs from mixing.

A run owns its ``output_dir``: ``checkpoint.pt`` and ``checkpoint.prev.pt``,
``results.json`` and, with the CSV logger, its log folder. :class:`RunFolder` checks the
folder before any work; :func:`check_resumable` and :func:`check_state_fits` check that a
checkpoint belongs to the run that resumes it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CHECKPOINT_NAME, atomic_write, previous_path, remove_stale_temporaries
from .config import RESUMABLE_KEYS

RESULTS_NAME = "results.json"
_ABSENT = "<absent>"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict (an empty dict is a value of its own).

    Examples:
        >>> flatten({"a": {"b": 1, "c": {}}, "d": [2]})
        {'a.b': 1, 'a.c': {}, 'd': [2]}
    """
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_under(key: str, node: str) -> bool:
    """Whether the dotted ``key`` is ``node`` or lies inside it.

    Examples:
        >>> is_under("logger.backend", "logger"), is_under("logger", "logger.backend")
        (True, False)
    """
    return key == node or key.startswith(f"{node}.")


def non_finite_entry(node: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite float in nested dicts and lists.

    Examples:
        >>> non_finite_entry({"final": {"regret": [1.0, float("nan")]}})
        'final.regret.1'
        >>> non_finite_entry({"final": {"regret": None}}) is None
        True
    """
    if isinstance(node, float):
        return None if math.isfinite(node) else path
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return None
    for key, value in items:
        found = non_finite_entry(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def check_resumable(
    stored: dict[str, Any],
    current: dict[str, Any],
    path: Path,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuses to resume the checkpoint ``path`` of a run configured otherwise.

    ``stored`` and ``current`` are the two runs' configs as nested dicts. Only the keys of
    :data:`~torchrl_ermas.training.config.RESUMABLE_KEYS` may differ, ``iterations`` only
    upwards. A setting that the checkpoint lacks (it was written before the setting
    existed) counts as its value in ``defaults`` (the schema's defaults, a nested dict), so
    a new setting left at its default does not block resuming an older run.

    Examples:
        >>> check_resumable({"seed": 0, "iterations": 5}, {"seed": 1, "iterations": 9}, Path("c.pt"))
        Traceback (most recent call last):
        ...
        ValueError: cannot resume from 'c.pt': its run was configured differently (seed: 0 in the checkpoint, ...
        >>> check_resumable({"iterations": 5}, {"iterations": 5, "new": 1}, Path("c.pt"), defaults={"new": 1})
    """
    old, new = flatten(defaults or {}), flatten(current)
    old = {key: value for key, value in old.items() if key in new} | flatten(stored)
    changed = [
        key
        for key in sorted(old.keys() | new.keys())
        if not any(is_under(key, free) for free in RESUMABLE_KEYS) and old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]
    if new["iterations"] < old["iterations"]:
        changed.insert(0, "iterations")
    if changed:
        details = "; ".join(
            f"{key}: {old.get(key, _ABSENT)!r} in the checkpoint, {new.get(key, _ABSENT)!r} now" for key in changed
        )
        raise ValueError(
            f"cannot resume from {str(path)!r}: its run was configured differently "
            f"({details}). On resume only {', '.join(RESUMABLE_KEYS)} may change "
            "(iterations only upwards); start the new configuration in another "
            "output_dir, or set overwrite=true to replace this run."
        )


def check_own_folders(output_dirs: Sequence[str | Path]) -> None:
    """Refuses runs that would share a folder (and overwrite each other's checkpoints,
    logs and results), naming the first two.

    Examples:
        >>> check_own_folders(["out/run0", "out/run1"])
        >>> check_own_folders(["out/run0", "out/./run0"])
        Traceback (most recent call last):
        ...
        ValueError: every run needs an output_dir of its own, but runs 0 and 1 both write to out/run0.
    """
    seen: dict[Path, int] = {}
    for index, folder in enumerate(output_dirs):
        resolved = Path(folder).resolve()
        if resolved in seen:
            raise ValueError(
                f"every run needs an output_dir of its own, but runs {seen[resolved]} and {index} both "
                f"write to {os.path.relpath(resolved)}."
            )
        seen[resolved] = index


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _unsized(value: Any) -> bool:
    """Whether ``value`` is a buffer not sized yet (an empty tensor)."""
    return isinstance(value, torch.Tensor) and value.numel() == 0


def check_state_fits(current: dict[str, Any], stored: dict[str, Any], path: Path) -> None:
    """Refuses a stored state dict whose entries or shapes differ from ``current``'s.

    An empty tensor of ``current`` is a buffer that its module sizes at its first call
    (e.g. :class:`~torchrl_ermas.envs.economy.SaezPlanner`'s samples, one row per
    environment): any stored shape fits it, and the module's ``load_state_dict`` sizes it.

    Examples:
        >>> check_state_fits({"w": torch.zeros(3)}, {"w": torch.zeros(4)}, Path("c.pt"))
        Traceback (most recent call last):
        ...
        ValueError: checkpoint 'c.pt' does not fit this run: 1 parameter(s) differ (w: [4] in the checkpoint, ...
        >>> check_state_fits({"samples": torch.zeros(0)}, {"samples": torch.zeros(64)}, Path("c.pt"))
    """
    current, stored = flatten(current), flatten(stored)
    problems = [f"{key} missing" for key in current.keys() - stored.keys()]
    problems += [f"{key} unexpected" for key in stored.keys() - current.keys()]
    problems += [
        f"{key}: {_shape(stored[key])} in the checkpoint, {_shape(current[key])} now"
        for key in current.keys() & stored.keys()
        if _shape(current[key]) != _shape(stored[key]) and not _unsized(current[key])
    ]
    if problems:
        shown = "; ".join(sorted(problems)[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this run: {len(problems)} parameter(s) "
            f"differ ({shown}). It was written for another environment (e.g. n_agents, "
            "its observations) or other network sizes (hidden, depth, critic_depth, "
            "policy_bias, share_params)."
        )


class RunFolder:
    """The files of one run in ``path``: checkpoints, ``results.json``, its log folder.

    Args:
        path: the run's ``output_dir``.
        log_dir: the folder of the run's logger (``logs/<experiment name>``), whatever
            the backend; its CSV files are kept in step with resumes.

    Examples:
        >>> import tempfile
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.prepare(resume=False, overwrite=False)  # writable, and holds no run
        >>> _ = folder.checkpoint.write_bytes(b"")
        >>> folder.prepare(resume=False, overwrite=False)
        Traceback (most recent call last):
        ...
        ValueError: output_dir '...' holds another run (checkpoint.pt): set resume=true to continue it, ...
    """

    def __init__(self, path: str | Path, log_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.log_dir = None if log_dir is None else Path(log_dir)

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt`` (its fallback is ``checkpoint.prev.pt``)."""
        return self.path / CHECKPOINT_NAME

    @property
    def unreadable(self) -> Path:
        """Where a ``checkpoint.pt`` that does not load is set aside."""
        return self.path / f"{CHECKPOINT_NAME}.unreadable"

    @property
    def results(self) -> Path:
        """``results.json``."""
        return self.path / RESULTS_NAME

    def files(self) -> list[Path]:
        """The run's files and folders that exist."""
        paths = [self.checkpoint, previous_path(self.checkpoint), self.unreadable, self.results]
        if self.log_dir is not None:
            paths.append(self.log_dir)
        return [path for path in paths if path.exists()]

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Before any work: the folder is writable, interrupted writes are cleaned up, and
        it holds no other run unless ``resume`` or ``overwrite`` is set (a ``resume``
        needs a checkpoint where there are results)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as err:
            raise ValueError(f"output_dir {str(self.path)!r} is not a writable folder ({err}).") from None
        names = (CHECKPOINT_NAME, previous_path(self.checkpoint).name, RESULTS_NAME)
        remove_stale_temporaries(self.path, names)
        existing = self.files()
        if existing and not (resume or overwrite):
            raise ValueError(
                f"output_dir {str(self.path)!r} holds another run "
                f"({', '.join(p.name for p in existing)}): set resume=true to continue it, "
                "overwrite=true to replace it, or choose another output_dir."
            )
        checkpoints = (self.checkpoint, previous_path(self.checkpoint), self.unreadable)
        if resume and self.results.exists() and not any(p.exists() for p in checkpoints):
            raise ValueError(
                f"output_dir {str(self.path)!r} holds results.json but no checkpoint to "
                "resume from: set overwrite=true to start the run anew."
            )

    def remove(self) -> None:
        """Deletes the run's files (for ``overwrite``)."""
        for path in self.files():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def set_aside_unreadable(self) -> Path:
        """Renames an unreadable ``checkpoint.pt`` to :attr:`unreadable`, so that the next
        save does not push it over the previous checkpoint, which did load."""
        os.replace(self.checkpoint, self.unreadable)
        return self.unreadable

    def truncate_csv_log(self, next_iteration: int) -> None:
        """Drops the CSV rows of iterations from ``next_iteration`` on (a resumed run
        replays them), and rows that a kill cut short."""
        scalars = None if self.log_dir is None else self.log_dir / "scalars"
        if scalars is None or not scalars.is_dir():
            return
        csvs = sorted(scalars.glob("*.csv"))
        remove_stale_temporaries(scalars, [csv.name for csv in csvs])
        for csv in csvs:
            rows = []
            for line in csv.read_text().splitlines():
                step, _, value = line.partition(",")
                if step.isdigit() and value and int(step) < next_iteration:
                    rows.append(f"{line}\n")
            text = "".join(rows).encode()
            atomic_write(csv, lambda handle, text=text: handle.write(text))
