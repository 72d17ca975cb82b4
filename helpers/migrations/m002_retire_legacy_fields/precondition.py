"""002 runs only where its predecessor is in effect: a passed verify in the predecessor's ledger, not rolled back since."""

from __future__ import annotations

from typing import Any

from helpers.steps.chain import for_apply, require_chain
from helpers.steps.migration import Migration


def require_predecessor_in_effect(transport: Any, migration: Migration) -> None:
    """Refuses unless the deployment's ledger (migrationRuns) has a passed verify of the predecessor that no
    executed rollback of it (of any outcome: a failed one may have changed documents back) followed; a rollback
    preview does not count. This is the early check, before a backup or a plan; apply asks again, in the
    transaction that takes the deployment lock and in every batch's."""
    require_chain(transport, for_apply(migration), migration.id, "Nothing was read or sent.")
