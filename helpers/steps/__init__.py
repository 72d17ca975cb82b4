"""The steps of a run (backup, plan, apply, verify, rollback), their contract, and what a migration declares for them."""
