"""Downstream evaluation of speech encoders: SUPERB-style probes on a frozen upstream (cached hidden states,
learnable layer weights, light heads) and CTC fine-tuning, as one workload: `DownstreamTask(DownstreamConfig(...),
TaskContext(...))`. See /work/shared/reference/superb-downstream.md for what s3prl and fedwav2vec2 do."""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "DownstreamConfig": "config",
    "DownstreamTask": "task",
    "load_upstream": "upstream",
    "Upstream": "upstream",
    "PROBES": "config",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
