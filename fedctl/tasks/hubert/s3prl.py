"""HF ↔ fairseq/s3prl: the converted checkpoint layout s3prl's `hubert_local` upstream reads.

s3prl's `upstream/hubert/convert.py` turns a fairseq HuBERT checkpoint into
`{"task_cfg": dict, "model_cfg": dict, "model_weight": state_dict, "dictionaries_symbols": [[str, ...]]}`
and `upstream/hubert/hubert_model.py` rebuilds fairseq's HubertModel from it (unknown cfg keys are dropped).
s3prl is not a dependency: the layout and names below follow those two files.

Name mapping (ours → fairseq; L = layer index; post-LN "transformer" layers, group-norm extractor):

    hubert.masked_spec_embed                                   mask_emb
    hubert.feature_extractor.conv_layers.i.conv.weight         feature_extractor.conv_layers.i.0.weight
    hubert.feature_extractor.conv_layers.0.layer_norm.*        feature_extractor.conv_layers.0.2.*   (GroupNorm)
    hubert.feature_projection.layer_norm.*                     layer_norm.*
    hubert.feature_projection.projection.*                     post_extract_proj.*
    hubert.encoder.pos_conv_embed.conv.bias                    encoder.pos_conv.0.bias
    hubert.encoder.pos_conv_embed.conv.parametrizations.weight.original0 / original1
                                                               encoder.pos_conv.0.weight_g / weight_v
    hubert.encoder.layer_norm.*                                encoder.layer_norm.*
    hubert.encoder.layers.L.attention.{q,k,v,out}_proj.*       encoder.layers.L.self_attn.{q,k,v,out}_proj.*
    hubert.encoder.layers.L.layer_norm.*                       encoder.layers.L.self_attn_layer_norm.*
    hubert.encoder.layers.L.feed_forward.intermediate_dense.*  encoder.layers.L.fc1.*
    hubert.encoder.layers.L.feed_forward.output_dense.*        encoder.layers.L.fc2.*
    hubert.encoder.layers.L.final_layer_norm.*                 encoder.layers.L.final_layer_norm.*
    final_proj.*                                               final_proj.*
    label_embs_concat [K, D]                                   label_embs_concat [4 + K, D]

fairseq's label dictionary starts with its 4 specials (<s>, <pad>, </s>, <unk>) and then the cluster ids
"0" … "K-1", and HuBERT has one label embedding per dictionary entry; the 4 special rows are written as zeros
(never a target) and dropped again on the way back, so HF → fairseq → HF is exact.
"""

from __future__ import annotations

import ast
from typing import Any

import torch

from fedctl.errors import FedctlError

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
_LAYER = [
    ("attention.q_proj", "self_attn.q_proj"), ("attention.k_proj", "self_attn.k_proj"),
    ("attention.v_proj", "self_attn.v_proj"), ("attention.out_proj", "self_attn.out_proj"),
    ("layer_norm", "self_attn_layer_norm"), ("feed_forward.intermediate_dense", "fc1"),
    ("feed_forward.output_dense", "fc2"), ("final_layer_norm", "final_layer_norm"),
]


def name_map(num_layers: int, num_conv: int, conv_bias: bool = False) -> dict[str, str]:
    """Our parameter names → fairseq's, for a post-LN HuBERT with a group-norm conv extractor."""
    m = {"hubert.masked_spec_embed": "mask_emb", "label_embs_concat": "label_embs_concat"}
    for i in range(num_conv):
        m[f"hubert.feature_extractor.conv_layers.{i}.conv.weight"] = f"feature_extractor.conv_layers.{i}.0.weight"
        if conv_bias:
            m[f"hubert.feature_extractor.conv_layers.{i}.conv.bias"] = f"feature_extractor.conv_layers.{i}.0.bias"
    pairs = [
        ("hubert.feature_extractor.conv_layers.0.layer_norm", "feature_extractor.conv_layers.0.2"),
        ("hubert.feature_projection.layer_norm", "layer_norm"),
        ("hubert.feature_projection.projection", "post_extract_proj"),
        ("hubert.encoder.layer_norm", "encoder.layer_norm"),
        ("final_proj", "final_proj"),
    ]
    pairs += [(f"hubert.encoder.layers.{i}.{a}", f"encoder.layers.{i}.{b}") for i in range(num_layers) for a, b in _LAYER]
    for ours, theirs in pairs:
        for suffix in ("weight", "bias"):
            m[f"{ours}.{suffix}"] = f"{theirs}.{suffix}"
    pos = "hubert.encoder.pos_conv_embed.conv"
    m[f"{pos}.bias"] = "encoder.pos_conv.0.bias"
    m[f"{pos}.parametrizations.weight.original0"] = "encoder.pos_conv.0.weight_g"
    m[f"{pos}.parametrizations.weight.original1"] = "encoder.pos_conv.0.weight_v"
    return m


def model_cfg(config, final_dim: int, logit_temp: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """fairseq HubertConfig fields (s3prl's `HubertConfig` names) for a transformers HubertConfig."""
    if config.do_stable_layer_norm or config.feat_extract_norm != "group":
        raise FedctlError("only post-LN HuBERT with a group-norm extractor (HuBERT Base) converts to s3prl here",
                          "use the base or tiny preset")
    layers = [(d, k, s) for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride)]
    cfg = {
        "label_rate": 50, "extractor_mode": "default", "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size, "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads, "activation_fn": "gelu", "layer_type": "transformer",
        "dropout": config.hidden_dropout, "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout, "encoder_layerdrop": config.layerdrop,
        "dropout_input": config.feat_proj_dropout, "dropout_features": config.feat_proj_dropout,
        "final_dim": final_dim, "untie_final_proj": False, "layer_norm_first": False,
        "conv_feature_layers": repr(layers), "conv_bias": config.conv_bias, "logit_temp": logit_temp,
        "target_glu": False, "feature_grad_mult": 0.1, "mask_length": 10, "mask_prob": 0.8, "mask_selection": "static",
        "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10,
        "mask_channel_prob": 0.0, "mask_channel_selection": "static", "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False, "mask_channel_min_space": 1, "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups, "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False, "skip_nomask": False, "checkpoint_activations": False,
    }
    cfg.update(extra or {})
    return cfg


def to_s3prl(model, task_cfg: dict[str, Any] | None = None, cfg_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A HubertPretrainModel as s3prl's converted checkpoint dict (CPU tensors, fairseq names)."""
    config = model.hubert.config
    names = name_map(config.num_hidden_layers, len(config.conv_dim), config.conv_bias)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    missing = sorted(set(state) - set(names))
    if missing:
        raise FedctlError(f"no fairseq name for {missing[:3]}", "the model is not a HuBERT Base-shaped model")
    weights = {names[k]: v for k, v in state.items()}
    embs = weights["label_embs_concat"]
    weights["label_embs_concat"] = torch.cat([torch.zeros(len(SPECIALS), embs.shape[1], dtype=embs.dtype), embs])
    k = embs.shape[0]
    return {
        "task_cfg": {"data": "", "fine_tuning": False, "labels": ["km"], "label_dir": None, "label_rate": 50,
                     "sample_rate": 16000, "normalize": False, "enable_padding": False, "max_keep_size": None,
                     "max_sample_size": 250000, "min_sample_size": 32000, "single_target": False,
                     "random_crop": True, "pad_audio": False, **(task_cfg or {})},
        "model_cfg": model_cfg(config, embs.shape[1], float(model.logit_temp), cfg_extra),
        "model_weight": weights,
        "dictionaries_symbols": [SPECIALS + [str(i) for i in range(k)]],
    }


def hf_config_from_s3prl(cfg: dict[str, Any], attn_implementation: str = "sdpa"):
    """The transformers HubertConfig of a fairseq `model_cfg` dict."""
    from transformers import HubertConfig

    if cfg.get("layer_norm_first") or cfg.get("extractor_mode", "default") != "default":
        raise FedctlError("this s3prl checkpoint is pre-LN / layer-norm extractor (HuBERT Large style)",
                          "only HuBERT Base-style checkpoints convert here")
    conv = ast.literal_eval(cfg["conv_feature_layers"])
    return HubertConfig(
        hidden_size=cfg["encoder_embed_dim"], num_hidden_layers=cfg["encoder_layers"],
        num_attention_heads=cfg["encoder_attention_heads"], intermediate_size=cfg["encoder_ffn_embed_dim"],
        conv_dim=tuple(c[0] for c in conv), conv_kernel=tuple(c[1] for c in conv), conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(cfg.get("conv_bias", False)), num_conv_pos_embeddings=cfg["conv_pos"],
        num_conv_pos_embedding_groups=cfg["conv_pos_groups"], hidden_dropout=cfg.get("dropout", 0.1),
        attention_dropout=cfg.get("attention_dropout", 0.1), activation_dropout=cfg.get("activation_dropout", 0.0),
        feat_proj_dropout=cfg.get("dropout_input", 0.0), layerdrop=cfg.get("encoder_layerdrop", 0.0),
        feat_extract_norm="group", do_stable_layer_norm=False, mask_time_prob=0.05,
        attn_implementation=attn_implementation,
    )


def from_s3prl(ckpt: dict[str, Any]):
    """A HubertPretrainModel rebuilt from s3prl's converted dict (the inverse of `to_s3prl`)."""
    from fedctl.tasks.hubert.model import HubertPretrainModel

    for key in ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"):
        if key not in ckpt:
            raise FedctlError(f"s3prl checkpoint lacks '{key}'", "convert it with s3prl's upstream/hubert/convert.py")
    cfg = ckpt["model_cfg"]
    config = hf_config_from_s3prl(cfg)
    symbols = ckpt["dictionaries_symbols"][0]
    specials = sum(1 for s in symbols if s in SPECIALS)
    num_classes = len(symbols) - specials
    with torch.random.fork_rng(devices=[]):
        model = HubertPretrainModel(config, num_classes, cfg["final_dim"], cfg.get("logit_temp", 0.1))
    names = {v: k for k, v in name_map(config.num_hidden_layers, len(config.conv_dim), config.conv_bias).items()}
    state = {}
    for theirs, tensor in ckpt["model_weight"].items():
        if theirs not in names:
            raise FedctlError(f"unexpected fairseq parameter {theirs}", "only HuBERT Base-style checkpoints convert here")
        state[names[theirs]] = tensor[specials:] if theirs == "label_embs_concat" else tensor
    model.load_state_dict(state, strict=True)
    return model
