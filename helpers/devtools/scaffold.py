"""`runbook new-migration ID`: a new migration's folder, declared as a one-table backfill, that passes its tests
and dry-runs at once; the person writing it then fills in the rule (docs/design.md, "Adding a migration").

Development tooling (it writes into the checkout's helpers/migrations/, so the wheel leaves it out, as setup.py
says). The new migration comes after the registry's head, so the chain stays one line.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from helpers import migrations
from helpers.connection.errors import PreconditionFailed

#: A migration id: three digits, then a name in snake case (its folder is `m<id>`).
ID_PATTERN = re.compile(r"\d{3}_[a-z][a-z0-9_]*")

INIT = '''"""Migration {id}: {title}.

README.md beside it says what it does, when to run it and how to roll it back.
"""

from __future__ import annotations

from pathlib import Path

from helpers.steps.migration import backfill

from . import checks, rules

MIGRATION = backfill(
    id="{id}",
    title="{title}",
    predecessor="{predecessor}",
    table="{table}",
    fields=rules.FIELDS,
    migrate_one=rules.migrate_one,
    checks=checks.CHECKS,
    folder=Path(__file__).parent,
)
'''

RULES = '''"""Migration {id}'s pure rule: the fields to set on one document of `{table}`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The fields it sets: it owns them (verify checks every other field stays as it was; rollback strip removes them).
FIELDS = ("{field}",)


def migrate_one(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields to set on `doc` (a subset of FIELDS), or None to leave it alone. The fields it reads become
    apply's precondition. It plans nothing yet: write the rule, and its tests in test_rules.py."""
    return None
'''

CHECKS = '''"""Migration {id}'s own verify checks, run after the core's and the backfill's own (`migrate_one` recomputed on
every live document): a `helpers.steps.migration.DocumentCheck` per property the rule promises beyond that."""

from __future__ import annotations

from helpers.steps.migration import DocumentCheck

CHECKS: tuple[DocumentCheck, ...] = ()
'''

TESTS = '''"""Migration {id}'s tests, beside it (pytest collects helpers/migrations/): its rule and its declaration."""

from __future__ import annotations

from helpers import migrations

from . import MIGRATION, rules


def test_the_rule_sets_only_its_own_fields() -> None:
    for doc in ({{"_id": "a"}}, {{"_id": "b", "{field}": None}}):
        assert set(rules.migrate_one(doc) or {{}}) <= set(rules.FIELDS)


def test_the_registry_holds_it_as_declared() -> None:
    assert migrations.get("{id}") is MIGRATION and MIGRATION.tables == ("{table}",)
    assert MIGRATION.owned_fields == {{"{table}": frozenset(rules.FIELDS)}}
'''

README = '''# Migration {id}: {title}

What it does: sets `{field}` on the documents of `{table}` that `rules.migrate_one` returns a value for (a
one-table backfill, `helpers.steps.migration.backfill`). It comes after `{predecessor}`.

- **Rule**: `rules.py` (`migrate_one`: one document in, the fields to set out). Its tests: `test_rules.py`.
- **Checks**: the core's, `backfill_recomputed` (the rule run again on each live document agrees with it), and
  those of `checks.py`.
- **Schema**: add `{field}` to `{table}` in `convex/schema.ts` as `v.optional(...)` and deploy the schema before
  apply (a schema fragment beside this file, spread in there, keeps it with the migration).
- **Run**: `runbook run --url URL --migration {id} --dry-run`, then `--confirm`.
- **Roll back**: `strip` removes what it set; `restore` puts back the backup's documents.
'''


def scaffold(migration_id: str, *, title: str | None = None, table: str | None = None, field: str | None = None,
             root: Path | None = None) -> Path:
    """Writes helpers/migrations/m<id>/ (README, rules, checks, tests) declaring a backfill after the registry's
    head; refuses an id that is malformed or taken. `table` defaults to the head's first table, `field` to the
    id's name in camel case. Returns the folder."""
    if not ID_PATTERN.fullmatch(migration_id):
        raise PreconditionFailed(f"{migration_id!r} is not a migration id.", hint="Use three digits and a snake_case name, e.g. 003_backfill_version.")
    known = migrations.all_migrations()
    if any(m.id == migration_id or m.id[:3] == migration_id[:3] for m in known):
        raise PreconditionFailed(f"A migration numbered {migration_id[:3]} exists already.", hint=f"Known: {', '.join(m.id for m in known)}.")
    head = migrations.get(migrations.head_id())
    folder = (root or Path(migrations.__file__).parent) / f"m{migration_id}"
    name = migration_id[4:]
    values = {
        "id": migration_id,
        "title": title or name.replace("_", " ").capitalize(),
        "predecessor": head.id,
        "table": table or head.tables[0],
        "field": field or re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name),
    }
    folder.mkdir(parents=True)
    for file_name, template in (("__init__.py", INIT), ("rules.py", RULES), ("checks.py", CHECKS), ("test_rules.py", TESTS),
                                ("README.md", README)):
        (folder / file_name).write_text(template.format(**values))
    return folder


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the new migration's id: three digits and a snake_case name (e.g. 003_backfill_version)")
    parser.add_argument("--title", help="its title (default: from the id)")
    parser.add_argument("--table", help="the table it backfills (default: the newest migration's first table)")
    parser.add_argument("--field", help="the field it sets (default: the id's name in camel case)")


def cli_main(args: argparse.Namespace) -> int:
    folder = scaffold(args.id, title=args.title, table=args.table, field=args.field)
    print(f"Created {folder} (README.md, __init__.py, rules.py, checks.py, test_rules.py).")
    print(f"Next: write rules.migrate_one and its tests, add the field to convex/schema.ts, then "
          f"`runbook run --url URL --migration {args.id} --dry-run`.")
    return 0
