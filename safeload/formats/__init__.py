"""formats capability (see docs/architecture.md)."""
