"""Shared fixtures: a recognisable deploy key in the environment and local Convex test deployments.

Each deployment is the real Node server (local_deployment/server.ts) on a free loopback port, running this
project's convex/ functions through convex-test; it starts in about a second.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import migrations
from helpers.connection.transport import ConvexTransport
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence.run_folder import bind_migration
from helpers.steps.migration import Migration
from tests.toy_migration import TOY

#: Recognisable on purpose: the secret-leak tests search run folders for it.
TEST_DEPLOY_KEY = f"test-deploy-key-{secrets.token_hex(12)}"


@pytest.fixture(scope="session", autouse=True)
def deploy_key() -> Iterator[str]:
    """CONVEX_DEPLOY_KEY for this process and every notebook kernel it starts."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CONVEX_DEPLOY_KEY", TEST_DEPLOY_KEY)
    patch.delenv("CONVEX_DEPLOY_KEY_FILE", raising=False)
    patch.setenv("RUNBOOK_HEADLESS", "1")
    yield TEST_DEPLOY_KEY
    patch.undo()


@pytest.fixture(scope="session")
def shared_deployment(deploy_key: str) -> Iterator[LocalDeployment]:
    """One deployment for tests that only read, or write data nobody else looks at."""
    with LocalDeployment(deploy_key=deploy_key) as deployment:
        yield deployment


@pytest.fixture
def deployment(deploy_key: str) -> Iterator[LocalDeployment]:
    """A fresh, empty deployment for a test that needs to know every document in it."""
    with LocalDeployment(deploy_key=deploy_key) as fresh:
        yield fresh


@pytest.fixture
def transport(deployment: LocalDeployment) -> Iterator[ConvexTransport]:
    with deployment.transport() as client:
        yield client


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder of migration 001 (a folder names its migration: helpers.evidence.run_folder refuses one that does not)."""
    path = tmp_path / "run"
    bind_migration(path, "001_s3_asset_tracking")
    return path


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Migration:
    """The registry with a migration the runbook does not ship (tests/toy_migration.py) after the real ones."""
    real = migrations.all_migrations()
    monkeypatch.setattr(migrations, "all_migrations", lambda: (*real, TOY))
    return TOY
