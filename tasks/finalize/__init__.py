"""Finalize: merge the committed shards into the manifests and exports, and write the summary
(:mod:`.finalizer`)."""
