"""The connection to a deployment: HTTP transport, the runbook's Convex calls, value encoding, errors."""
