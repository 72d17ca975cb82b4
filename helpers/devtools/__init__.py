"""Development tools kept out of the wheel: the local test deployment, sample data, the demo, the migration scaffold."""
