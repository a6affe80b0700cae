"""integrations capability (see docs/architecture.md)."""
