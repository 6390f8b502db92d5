"""Pipeline steps and the shared domain code (schemas, config, model, metrics)."""
