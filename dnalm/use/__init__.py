"""Using a trained bundle: embeddings (``embedding``), zero-shot variant scores (``variants``), sampling
(``generate``), and the sequence inputs they read (``sequences``: FASTA, BED, CSV)."""
