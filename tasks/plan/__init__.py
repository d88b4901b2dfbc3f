"""Planning: list the source once and split it into deterministic shards (:mod:`.planner`)."""
