"""Data preparation: demo corpora, client partitions, cluster targets."""
