"""Model adapters (one module per library) and the process-wide model cache."""
