"""Shared by the sandbox tests: skip, with the reason, where the sandbox cannot start here."""

from __future__ import annotations

import pytest

from factory.verifiers.sandbox import SandboxConfig, SandboxUnavailable, probe


def needs_sandbox(config: SandboxConfig) -> pytest.MarkDecorator:
    """A skipif mark naming the missing layer (bubblewrap, cgroups, the uid drop, seccomp)."""
    try:
        probe(config)
        missing = None
    except SandboxUnavailable as e:  # pragma: no cover - depends on the machine
        missing = str(e)
    return pytest.mark.skipif(missing is not None, reason=f"no sandbox here: {missing}")
