"""One shard, start to commit: the runner (read -> decode -> stages -> rows -> commit), the commit protocol
(and the set of a plan's commits), progress reporting."""
