"""The application layer: workloads by name (`registry`) and a training run from a config (`recipe`)."""
