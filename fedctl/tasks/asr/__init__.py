"""DeepSpeech 1/2 speech recognition with CTC: reference features, models, a twice-differentiable CTC, data.

The ground of the gradient-inversion attacks (`fedctl attack ds1|ds2`); see
/work/shared/reference/gradient-inversion.md for what the reference victims did and why.
"""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "AsrConfig": "config",
    "AsrTask": "task",
    "load_asr_model": "task",
    "AsrUtterance": "data",
    "BLANK": "text",
    "DS1Config": "models",
    "DS2Config": "models",
    "DeepSpeech1": "models",
    "DeepSpeech2": "models",
    "FeatureCache": "data",
    "NUM_CLASSES": "text",
    "PRESETS": "models",
    "build_asr_model": "models",
    "check_feasible": "ctc",
    "check_utterances": "data",
    "collate": "data",
    "ctc_loss": "ctc",
    "decode": "text",
    "double_backward_safe": "models",
    "ds1_features": "features",
    "ds1_num_frames": "features",
    "ds2_features": "features",
    "ds2_num_frames": "features",
    "encode": "text",
    "error_rates": "text",
    "filter_duration": "data",
    "greedy_decode": "text",
    "load_corpus": "data",
    "load_partition": "data",
    "make_batch": "data",
    "min_frames_for": "ctc",
    "normalize_transcript": "text",
    "output_lengths": "models",
    "stack_context": "features",
    "too_short": "data",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
