"""Session-wide fixtures: tiny upstream checkpoints built once per session (see ``fixtures.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "examples"))  # examples/tasks.py, demo.py

from fixtures import FIXTURES, FixtureUnavailable, load_upstream  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``checkpoint_factory(name) -> Path``: the named fixture checkpoint, built once per session."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def get(name: str) -> Path:
        if name not in FIXTURES:
            raise KeyError(f"unknown fixture {name!r}; known: {sorted(FIXTURES)}")
        if name not in built:
            d = root / name
            d.mkdir()
            try:
                built[name] = FIXTURES[name](d)
            except FixtureUnavailable as e:
                pytest.skip(str(e))
        return built[name]

    return get


@pytest.fixture(scope="session")
def upstream_factory(checkpoint_factory):
    """``upstream_factory(name) -> torch.nn.Module``: the fixture loaded back with upstream (cached)."""
    models: dict = {}

    def get(name: str):
        if name not in models:
            models[name] = load_upstream(name, checkpoint_factory(name))
        return models[name]

    return get
