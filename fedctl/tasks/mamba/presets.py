"""Mamba2 model presets: the research configurations and a tiny one for CPU demos.

`pure_ssm_N_layer` is the research setting: a pure state-space stack (no attention layers) of width 768
with N Mamba2 blocks, state size 128, 64-dim heads (24 heads at expand 2), one B/C group and 256-token
scan chunks — the Mamba2 paper's defaults at small depth. It is meant for a GPU with mamba-ssm; on CPU
the pure-torch path runs it, slowly.

`tiny` (0.73 M parameters at vocab 2048) is sized for CPU: at batch 8 × seq_len 128 a step costs ~0.09
CPU-seconds, so the 4-client × 8-step × 12-round demo takes ~40 CPU-seconds while validation perplexity on
the demo corpus falls from ~3900 to ~77. Chunks of 32 beat 64/128 on the pure-torch path (less padding
and smaller intra-chunk matrices); a 64-wide model is ~2× faster but writes worse samples.
"""

from __future__ import annotations

# Keys are the Mamba2 hyperparameters MambaConfig can override one by one.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, num_layers=2, state_size=16, head_dim=32, expand=2, n_groups=1, chunk_size=32),
    "pure_ssm_1_layer": dict(
        hidden_size=768, num_layers=1, state_size=128, head_dim=64, expand=2, n_groups=1, chunk_size=256
    ),
    "pure_ssm_2_layer": dict(
        hidden_size=768, num_layers=2, state_size=128, head_dim=64, expand=2, n_groups=1, chunk_size=256
    ),
    "pure_ssm_4_layer": dict(
        hidden_size=768, num_layers=4, state_size=128, head_dim=64, expand=2, n_groups=1, chunk_size=256
    ),
}
