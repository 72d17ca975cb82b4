"""A runbook for Convex migrations: all logic behind the notebooks, in layers that each import only those below.

`connection/` (HTTP to a deployment, the runbook's Convex calls, values, errors) ← `evidence/` (the run folder, its
records, manifest, checks and pages) ← `steps/` (backup, plan, apply, verify, rollback, their contract and names) ←
`notebook_ui/` and `migrations/` (the registry, one folder per migration, found by id) ← `runner`, `sealing`,
`history`, `cli` on top; `devtools/` (local deployment, sample data, demo, scaffold) stays out of the wheel.
docs/design.md, "The layers of helpers/", says what each part holds."""
