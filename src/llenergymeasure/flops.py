"""Analytic forward FLOPs of decoder-only transformers, per request, prefill and decode separated.

One multiply-accumulate = 2 FLOPs. Counted: the query/key/value/output projections, the MLP (three matrices when
gated, as in Llama/Qwen/Mistral, two otherwise), attention scores and the weighted sum of values over the keys a
token actually attends to (causal: a token at position t sees t + 1 keys, cached or not), and the output layer for
every position whose logits are computed (the last prompt position, then each decoding step). Not counted:
norms, rotary embeddings, softmax, embedding look-ups (all far below 1 % at these sizes), and work on padding.

Generation of n tokens after a prompt of p tokens is one prefill pass over p positions (which yields the first
token) and n - 1 decoding passes of one position each.
"""

from __future__ import annotations

from typing import Any

#: model_type values whose MLP has a gate projection (three matrices)
GATED_MLP = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "cohere",
}
#: model_type values with a plain two-matrix MLP
PLAIN_MLP = {"gpt2", "gpt_neox", "opt", "gptj", "falcon", "bloom", "phi", "starcoder2"}


def _get(config: Any, *names: str, default=None):
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def model_dims(config: Any) -> dict:
    """The dimensions that set the cost per token, from a transformers config (object or dict)."""
    hidden = _get(config, "hidden_size", "n_embd", "d_model")
    heads = _get(config, "num_attention_heads", "n_head")
    model_type = _get(config, "model_type", default="unknown")
    dims = {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_layers": _get(config, "num_hidden_layers", "n_layer"),
        "num_heads": heads,
        "num_kv_heads": _get(config, "num_key_value_heads", default=heads),
        "head_dim": _get(config, "head_dim", default=hidden // heads if hidden and heads else None),
        "intermediate_size": _get(
            config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden if hidden else None
        ),
        "vocab_size": _get(config, "vocab_size"),
        "gated_mlp": model_type in GATED_MLP,
        "moe": bool(_get(config, "num_local_experts", "num_experts")),
    }
    if model_type in GATED_MLP and not dims["moe"]:
        dims["confidence"] = "high"
    elif model_type in PLAIN_MLP and not dims["moe"]:
        dims["confidence"] = "medium"  # biases, parallel blocks and the like are not modelled
    else:
        dims["confidence"] = "low"
    return dims


def linear_per_position(d: dict) -> int:
    """Projection and MLP FLOPs of one position through all layers (output layer excluded)."""
    q = d["hidden_size"] * d["num_heads"] * d["head_dim"]
    kv = 2 * d["hidden_size"] * d["num_kv_heads"] * d["head_dim"]
    o = d["num_heads"] * d["head_dim"] * d["hidden_size"]
    mlp = (3 if d["gated_mlp"] else 2) * d["hidden_size"] * d["intermediate_size"]
    return 2 * (q + kv + o + mlp) * d["num_layers"]


def attention(d: dict, first_position: int, positions: int, causal: bool = True) -> int:
    """Score and value FLOPs for ``positions`` consecutive positions starting at ``first_position``.

    Causal: position t attends to t + 1 keys. Non-causal (``causal=False``): every position attends to all
    ``first_position + positions`` keys, which is what a dense attention kernel computes before masking.
    """
    end = first_position + positions
    if causal:
        keys = (end * (end + 1) - first_position * (first_position + 1)) // 2
    else:
        keys = positions * end
    return 4 * d["num_heads"] * d["head_dim"] * keys * d["num_layers"]


def output_layer(d: dict) -> int:
    return 2 * d["hidden_size"] * d["vocab_size"]


def request_flops(d: dict, input_tokens: int, output_tokens: int) -> tuple[int, int]:
    """(prefill, decode) FLOPs of one request."""
    if output_tokens <= 0:
        return 0, 0
    prefill = input_tokens * linear_per_position(d) + attention(d, 0, input_tokens) + output_layer(d)
    steps = output_tokens - 1
    decode = steps * (linear_per_position(d) + output_layer(d)) + attention(d, input_tokens, steps)
    return prefill, decode


def flops_section(d: dict, requests: list[tuple[int, int]], window_s: float, output_tokens: int) -> dict:
    """The raw result's ``flops`` section from (input tokens, output tokens) per request."""
    prefill = decode = 0
    for n_in, n_out in requests:
        p, dec = request_flops(d, n_in, n_out)
        prefill += p
        decode += dec
    total = prefill + decode
    return {
        "method": "analytic_decoder_only",
        "confidence": d["confidence"],
        "total_flops": total,
        "prefill_flops": prefill,
        "decode_flops": decode,
        "flops_per_output_token": total / output_tokens if output_tokens else None,
        "flops_per_s": total / window_s if window_s > 0 else None,
        "counted": "projections, MLP, attention over attended keys, output layer; no norms/rotary/softmax; no padding",
        "model_dims": d,
    }


def analytic_parameters(hf_config: Any) -> int | None:
    """Weights of a decoder-only model from its config: the projections and MLPs that :func:`linear_per_position`
    counts (one weight per multiply-accumulate), the embedding, an untied output layer and the RMS/LayerNorm
    scales. None when the config lacks a dimension. Used where the engine's tensors do not count weights one by one
    (packed 4-bit storage) or live in other processes."""
    d = model_dims(hf_config)
    if any(
        d[k] is None for k in ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size", "vocab_size")
    ):
        return None
    tied = _get(hf_config, "tie_word_embeddings", default=False)
    embed = d["vocab_size"] * d["hidden_size"]
    norms = (2 * d["num_layers"] + 1) * d["hidden_size"]
    return linear_per_position(d) // 2 + embed * (1 if tied else 2) + norms
