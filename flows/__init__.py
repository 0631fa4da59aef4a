"""Prefect flows: thin wrappers over ``mert.stages`` (orchestration only, no ML logic)."""
