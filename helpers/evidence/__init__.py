"""The evidence of a run: its folder, manifest and hash chain, ledger checks and HTML pages."""
