"""Data: shard samples and writer (shards), windowing (windows), manifest, training stream (stream)."""
