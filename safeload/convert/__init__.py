"""convert capability (see docs/architecture.md)."""
