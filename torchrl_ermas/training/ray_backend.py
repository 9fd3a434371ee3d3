"""Training runs as Ray tasks: :func:`~torchrl_ermas.training.run_many` beyond one machine.

Ray is the optional extra ``pip install "torchrl-ermas[ray]"``; nothing else imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

#: the ``ray_address`` that starts a Ray on this machine (any other value goes to ``ray.init``)
LOCAL = "local"


def import_ray(ray_address: str) -> ModuleType:
    """Ray, or an ``ImportError`` that names the extra to install."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            f"ray_address={ray_address!r} runs the grid on Ray, which is not installed: "
            'pip install "torchrl-ermas[ray]" (or leave ray_address unset for local processes).'
        ) from err
    return ray


def check_ray_address(ray_address: str | None) -> None:
    """``ray_address`` must be ``None`` (local processes), ``"local"`` or a Ray address
    (``"auto"``, ``"ray://head:10001"``, ...); a Ray one needs Ray installed.

    Examples:
        >>> check_ray_address(None)
        >>> check_ray_address("")
        Traceback (most recent call last):
        ...
        ValueError: ray_address must be None (local processes), 'local' or a Ray cluster's address, got ''.
    """
    if ray_address is None:
        return
    if not isinstance(ray_address, str) or not ray_address.strip():
        raise ValueError(
            f"ray_address must be None (local processes), 'local' or a Ray cluster's address, got {ray_address!r}."
        )
    import_ray(ray_address)


def ray_results(
    task: Callable[..., dict[str, Any]],
    args: Sequence[tuple],
    *,
    ray_address: str,
    workers: int,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Runs ``task(*args[i])`` as Ray tasks of one CPU each; yields ``(i, result)`` as they finish.

    ``ray_address="local"`` starts a Ray of ``workers`` CPUs on this machine; any other
    value is the ``address`` of ``ray.init`` (``workers`` is then the cluster's business).
    A Ray already initialised in this process is used as it is, and left running; one
    started here is shut down at the end. A task that fails raises its error here, after
    the tasks still running are cancelled.
    """
    ray = import_ray(ray_address)
    started = not ray.is_initialized()
    if started:
        if ray_address == LOCAL:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_address, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(task)
    pending = {remote.remote(*arguments): i for i, arguments in enumerate(args)}
    try:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            yield index, ray.get(ready)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
