"""LoRA adapters: read/write peft adapter directories and merge K client adapters into one."""

from fedctl.lora.merge import (
    ModuleStats,
    merge_adapter_dirs,
    merge_state_dicts,
    naive_merge,
    normalize_weights,
    svd_merge,
    weights_from_shard_manifests,
)

__all__ = [
    "ModuleStats",
    "merge_adapter_dirs",
    "merge_state_dicts",
    "naive_merge",
    "normalize_weights",
    "svd_merge",
    "weights_from_shard_manifests",
]
