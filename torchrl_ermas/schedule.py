"""Step sizes that anneal over a run's budget of updates."""

from __future__ import annotations

from .validation import check_int, check_real


def anneal_share(done: int, total: int, start: float) -> float:
    """The share of a step size at update ``done`` (``0, 1, ..., total - 1``) of a run of ``total``.

    ``1`` over the first ``start`` share of the updates, then ``(1 - done / total) / (1 - start)``:
    linearly down to ``0`` at the end of the budget. ``start=1`` keeps the full step.

    Args:
        done (int): updates made so far, in ``[0, total)``.
        total (int): the run's number of updates, ``>= 1``.
        start (float): the share of the updates at the full step, in ``[0, 1]``.

    Examples:
        >>> [anneal_share(done, 4, start=0.5) for done in range(4)]
        [1.0, 1.0, 1.0, 0.5]
        >>> anneal_share(3, 4, start=1.0)
        1.0
    """
    check_int("total", total, 1)
    check_int("done", done, 0, total - 1)
    check_real("start", start, low=0, high=1)
    if start >= 1:
        return 1.0
    return min(1.0, (1 - done / total) / (1 - start))
