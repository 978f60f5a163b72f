"""Model builders, one module per framework (imported lazily by the backends)."""
