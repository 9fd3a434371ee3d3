"""Batched multi-agent environments following the torchrl-ermas TensorDict contract."""
from __future__ import annotations
