"""A workload the CLI can train in a fraction of a second: tests/core's LinearTask behind the registry's
interface (config.py + task.py). The `linear_cli` fixture puts it in place of mamba."""
