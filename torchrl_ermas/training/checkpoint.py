"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``.

A run keeps its last two checkpoints: :func:`save_checkpoint` with ``keep_previous=True``
writes the new file aside, links the current ``checkpoint.pt`` as ``checkpoint.prev.pt``
and then renames the new file over ``checkpoint.pt``, so that ``checkpoint.pt`` exists at
every moment; :func:`load_latest_checkpoint` falls back to the previous one when the
newest does not load (truncated, emptied, or deleted).
"""

from __future__ import annotations

import glob
import io
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file could not be read (truncated, empty, or not a checkpoint)."""


def previous_path(path: str | os.PathLike) -> Path:
    """The fallback copy of ``path``: ``checkpoint.pt`` -> ``checkpoint.prev.pt``.

    Examples:
        >>> previous_path("run/checkpoint.pt").as_posix()
        'run/checkpoint.prev.pt'
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _file_mode() -> int:
    """The mode of a new file under the current umask (``mkstemp`` alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary(path: Path) -> Path:
    """A new empty temporary file ``.{name}.*.tmp`` beside ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], Any],
    *,
    before_replace: Callable[[], Any] | None = None,
) -> Path:
    """Writes ``path`` atomically: ``write(handle)`` fills a temporary file, then a rename.

    The temporary file ``.{name}.*.tmp`` sits in the same folder; a process killed while
    writing leaves it behind (see :func:`remove_stale_temporaries`) and ``path`` intact.
    ``before_replace()`` runs once the new content is on disk, just before the rename.
    The file gets the ordinary mode of new files (``0666`` less the umask).

    Examples:
        >>> import tempfile
        >>> path = atomic_write(f"{tempfile.mkdtemp()}/a.txt", lambda f: f.write(b"hi"))
        >>> path.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _keep_as_previous(path: Path) -> None:
    """Makes ``previous_path(path)`` a copy of ``path`` (a hard link where the file system
    has them), atomically, leaving ``path`` in place."""
    link = _temporary(previous_path(path))
    link.unlink()
    try:
        os.link(path, link)
    except OSError:  # no hard links here: copy
        shutil.copyfile(path, link)
    os.replace(link, previous_path(path))


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Deletes the temporary files that killed :func:`atomic_write` calls left in ``folder``.

    Only the temporaries of the files ``names`` (``.{name}.*.tmp``) are removed; call it
    before a run starts writing, never while another process writes to the same folder.
    Returns the removed paths.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".checkpoint.pt.x1y2.tmp").write_bytes(b"")
        >>> [p.name for p in remove_stale_temporaries(folder, ["checkpoint.pt"])]
        ['.checkpoint.pt.x1y2.tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for name in names:
        for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, keep_previous: bool = False) -> Path:
    """Writes ``state`` to ``path`` atomically (temporary file in the same folder + rename).

    A run killed while saving leaves the previous checkpoint intact. With
    ``keep_previous=True`` the file that ``path`` held becomes :func:`previous_path`, the
    fallback of :func:`load_latest_checkpoint`. ``state`` must hold only tensors, numbers,
    strings, and lists / dicts of them, so that it loads with ``weights_only=True``.

    Examples:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> path = save_checkpoint({"iteration": 3, "w": torch.ones(2)}, f"{folder}/ckpt.pt")
        >>> load_checkpoint(path)["iteration"]
        3
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    rotate = (lambda: _keep_as_previous(path)) if keep_previous and path.exists() else None
    return atomic_write(path, lambda handle: handle.write(data), before_replace=rotate)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Loads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, truncated or not a checkpoint; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {str(path)!r} ({size} bytes) cannot be read: it is empty, "
            f"truncated or not a checkpoint ({type(err).__name__}: {err})."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a checkpoint dict.")
    return state


def load_latest_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict, Path] | None:
    """The newest of ``path`` and :func:`previous_path` that loads, with its path.

    Returns ``None`` when neither file exists. When the newest file is missing or does not
    load, a warning says so and the previous one is used.

    Raises:
        CheckpointError: the files exist but none of them loads.

    Examples:
        >>> import tempfile, warnings
        >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> _ = save_checkpoint({"iteration": 1}, path)
        >>> _ = save_checkpoint({"iteration": 2}, path, keep_previous=True)
        >>> _ = path.write_bytes(b"")  # the newest is lost
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # it warns that the newest does not load
        ...     state, used = load_latest_checkpoint(path)
        >>> state["iteration"], used.name
        (1, 'checkpoint.prev.pt')
    """
    path = Path(path)
    errors = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            if candidate == path and previous_path(path).exists():
                errors.append(f"checkpoint {str(path)!r} is missing.")
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(
                f"{errors[0]} Resuming from the previous checkpoint {str(candidate)!r}.",
                stacklevel=2,
            )
        return state, candidate
    if not errors:
        return None
    raise CheckpointError(
        " ".join(errors) + " No checkpoint of this run loads: delete the files and start "
        "the run anew (overwrite=true), or point output_dir at another run."
    )


def component_state(modules: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of component ``name`` in a checkpoint's ``modules``, without the prefix
    (empty when the run had no such component).

    Examples:
        >>> modules = {"planner_policy.weight": torch.ones(1), "agent_policy.weight": torch.zeros(1)}
        >>> component_state(modules, "planner_policy")
        {'weight': tensor([1.])}
    """
    prefix = f"{name}."
    return {k.removeprefix(prefix): v for k, v in modules.items() if k.startswith(prefix)}
