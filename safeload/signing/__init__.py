"""signing capability (see docs/architecture.md)."""
