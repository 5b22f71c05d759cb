"""`dojo eval`: held-out loss, answer metrics, lm-evaluation-harness tasks and before/after reports."""
