"""The registry: every migration is a folder `helpers/migrations/m<NNN>_<name>/` whose package exposes
`MIGRATION` (a `helpers.steps.migration.Migration`), found by its id. Migrations form a chain through
`predecessor`, checked when the registry loads (as Alembic's revision map is): a broken chain would let a
migration run before the one it builds on, or two migrations each believe they come last."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from helpers.connection.errors import PreconditionFailed

if TYPE_CHECKING:  # the declaration's type only: helpers.steps.migration looks migrations up here (a worker unpickling one)
    from helpers.steps.migration import Migration


@cache
def all_migrations() -> tuple[Migration, ...]:
    """Every migration of the package, in order (by folder name: m001_…, m002_…), its chain checked."""
    found = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.ispkg and module.name.startswith("m"):
            found.append((module.name, importlib.import_module(f"{__name__}.{module.name}").MIGRATION))
    return check_chain(found)


def check_chain(found: Sequence[tuple[str, Migration]]) -> tuple[Migration, ...]:
    """The migrations of (folder name, migration) pairs, refused unless each id is its folder's name without
    the `m`, ids are unique, every predecessor is a known migration, and exactly one migration is the head
    (no other names it as predecessor) and one the base (it names none)."""
    problems = [f"folder {folder} declares id {m.id!r} (expected {folder[1:]!r})" for folder, m in found if m.id != folder[1:]]
    ids = [m.id for _, m in found]
    problems += [f"id {i!r} is declared twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    problems += [f"{m.id} names an unknown predecessor {m.predecessor!r}" for _, m in found if m.predecessor is not None and m.predecessor not in ids]
    successors = {m.predecessor for _, m in found}
    heads = [i for i in ids if i not in successors]
    bases = [m.id for _, m in found if m.predecessor is None]
    if found and len(heads) != 1:
        problems.append(f"the chain has {len(heads)} heads ({', '.join(heads) or 'none: it loops'}), not one")
    if found and len(bases) != 1:
        problems.append(f"the chain has {len(bases)} first migrations ({', '.join(bases) or 'none'}), not one")
    if problems:
        raise PreconditionFailed(
            "The migrations in helpers/migrations/ do not form one chain: " + "; ".join(problems) + ".",
            hint="Name each folder m<id> after its migration's id and set `predecessor` to the migration before it "
            "(the newest one is the head: `runbook new-migration` fills both in).",
        )
    return tuple(m for _, m in found)


def get(migration_id: str) -> Migration:
    """The migration with this id; a clear error naming the known ones otherwise."""
    for migration in all_migrations():
        if migration.id == migration_id:
            return migration
    known = ", ".join(m.id for m in all_migrations())
    raise PreconditionFailed(f"No migration {migration_id!r} in this runbook.", hint=f"Use one of: {known}.")


def default_id() -> str:
    """The first migration: what every entry point runs when given no migration (never a folder's guess)."""
    return all_migrations()[0].id


def head_id() -> str:
    """The newest migration (the one no other names as predecessor): the next one's predecessor."""
    named = {m.predecessor for m in all_migrations()}
    return next(m.id for m in all_migrations() if m.id not in named)
