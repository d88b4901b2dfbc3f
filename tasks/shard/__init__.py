"""One shard, start to commit: the runner (read -> decode -> stages -> rows -> commit), the commit protocol,
progress reporting and the worker's allocator settings."""
