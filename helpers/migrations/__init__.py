"""The registry: every migration is a folder `helpers/migrations/m<NNN>_<name>/` whose package exposes
`MIGRATION` (a `helpers.migration.Migration`), found by its id. Migrations form a chain through
`predecessor`; the first one is the default of every entry point."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..errors import PreconditionFailed
from ..migration import Migration


@cache
def all_migrations() -> tuple[Migration, ...]:
    """Every migration of the package, in order (by folder name: m001_…, m002_…)."""
    found = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.ispkg and module.name.startswith("m"):
            found.append(importlib.import_module(f"{__name__}.{module.name}").MIGRATION)
    return tuple(found)


def get(migration_id: str) -> Migration:
    """The migration with this id; a clear error naming the known ones otherwise."""
    for migration in all_migrations():
        if migration.id == migration_id:
            return migration
    known = ", ".join(m.id for m in all_migrations())
    raise PreconditionFailed(f"No migration {migration_id!r} in this runbook.", hint=f"Use one of: {known}.")


def default_id() -> str:
    """The first migration: what a run folder without a recorded migration (and every entry point) runs."""
    return all_migrations()[0].id
