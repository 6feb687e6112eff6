"""Fixtures shared by every test: a per-session activation cache, so tests never read a user's cache.

The embedded model is converted once into the user cache (~/.cache/sae/models, or $SAE_CACHE_DIR).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def activation_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("activation-cache")
