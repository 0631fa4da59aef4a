"""The data layer: demo corpus synthesis, ingestion, and the sharded corpus format."""
