"""sandbox capability (see docs/architecture.md)."""
