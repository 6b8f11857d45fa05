"""DeepSpeech 1/2 speech recognition with CTC (features, models, twice-differentiable CTC, data)."""
