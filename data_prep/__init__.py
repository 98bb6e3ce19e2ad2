"""Sharding jobs: plan a genome into shard assignments, run one job slice, merge the manifest."""
