"""Model and training presets: HuBERT Base (fairseq `hubert_base_librispeech`) and a CPU-sized demo."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # fairseq hubert_base_librispeech.yaml: 7-layer conv extractor (512 ch), 768 x 12, 12 heads, FFN 3072,
    # conv_pos 128/16, final_dim 256, dropout 0.1, layerdrop 0.05, feature_grad_mult 0.1; lr 5e-4, warmup 32k,
    # max_tokens 1.4M samples (87.5 s) per GPU.
    "base": dict(
        hidden_size=768, num_layers=12, num_heads=12, ffn_size=3072, conv_dim=512, conv_pos=128, conv_pos_groups=16,
        final_dim=256, dropout=0.1, layerdrop=0.05, feature_grad_mult=0.1,
        max_batch_seconds=87.5, lr=5e-4, warmup_steps=32000, local_updates=50,
    ),
    # The CPU demo: 96 wide, 2 layers, 64-channel conv extractor (standard kernels and strides, so 20 ms frames).
    "tiny": dict(
        hidden_size=96, num_layers=2, num_heads=4, ffn_size=192, conv_dim=64, conv_pos=16, conv_pos_groups=4,
        final_dim=32, dropout=0.0, layerdrop=0.0, feature_grad_mult=1.0,
        max_batch_seconds=24.0, lr=2e-3, warmup_steps=10, local_updates=6,
    ),
}
ARCH_KEYS = ("hidden_size", "num_layers", "num_heads", "ffn_size", "conv_dim", "conv_pos", "conv_pos_groups",
             "final_dim", "dropout", "layerdrop", "feature_grad_mult")
TRAIN_KEYS = ("max_batch_seconds", "lr", "warmup_steps", "local_updates")
