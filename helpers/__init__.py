"""A runbook for Convex migrations: all logic behind the notebooks. The core (transport, values, run folder,
backup, plan, apply, verify, rollback, evidence, runner) runs any migration declared under
`helpers/migrations/`, one folder per migration, found by id (`helpers.migrations.get`)."""
