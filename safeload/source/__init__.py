"""source capability (see docs/architecture.md)."""
