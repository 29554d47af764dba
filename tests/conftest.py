"""Shared fixtures: fixed seeds for repeatable protocol runs."""

from __future__ import annotations

import hashlib

import pytest


def fixed_seeds(label: str = "pysmpc-tests") -> dict:
    """Seeds for each pair of parties, derived from a label (repeatable runs)."""
    return {
        pair: hashlib.sha256(f"{label}:{pair}".encode()).digest()[:16]
        for pair in ((0, 1), (0, 2), (1, 2))
    }


@pytest.fixture
def seeds():
    return fixed_seeds()
