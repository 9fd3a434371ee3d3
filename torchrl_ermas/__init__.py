"""torchrl-ermas: ERMAS (epsilon-Robust Multi-Agent Simulation) for TorchRL.

The core library is environment-agnostic; batched environments live in
:mod:`torchrl_ermas.envs`.
"""

from __future__ import annotations

__version__ = "0.1.0"
