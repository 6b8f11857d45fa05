"""DeepSpeech 1/2 speech recognition with CTC: reference features, models, a twice-differentiable CTC, data.

The ground of the gradient-inversion attacks (`fedctl attack ds1|ds2`); see
/work/shared/reference/gradient-inversion.md for what the reference victims did and why.
"""

from fedctl.tasks.asr.ctc import check_feasible, ctc_loss, min_frames_for
from fedctl.tasks.asr.data import (
    AsrUtterance,
    FeatureCache,
    check_utterances,
    collate,
    filter_duration,
    load_corpus,
    load_partition,
    make_batch,
    too_short,
)
from fedctl.tasks.asr.features import (
    ds1_features,
    ds1_num_frames,
    ds2_features,
    ds2_num_frames,
    stack_context,
)
from fedctl.tasks.asr.models import (
    PRESETS,
    DeepSpeech1,
    DeepSpeech2,
    DS1Config,
    DS2Config,
    build_asr_model,
    double_backward_safe,
    output_lengths,
)
from fedctl.tasks.asr.text import (
    BLANK,
    NUM_CLASSES,
    decode,
    encode,
    error_rates,
    greedy_decode,
    normalize_transcript,
)

__all__ = [
    "AsrUtterance", "BLANK", "DS1Config", "DS2Config", "DeepSpeech1", "DeepSpeech2", "FeatureCache", "NUM_CLASSES",
    "PRESETS", "build_asr_model", "check_feasible", "check_utterances", "collate", "ctc_loss", "decode",
    "double_backward_safe", "ds1_features", "ds1_num_frames", "ds2_features", "ds2_num_frames", "encode",
    "error_rates", "filter_duration", "greedy_decode", "load_corpus", "load_partition", "make_batch",
    "min_frames_for", "normalize_transcript", "output_lengths", "stack_context", "too_short",
]
