"""Analytic FLOPs against torch's FLOP counter on the real tiny model (B6: no s^2 x s error, no 2 P N shortcut)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llenergymeasure.flops import attention, linear_per_position, model_dims, output_layer, request_flops


@pytest.fixture(scope="module")
def eager_model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="eager").eval()


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def test_prefill_matches_flop_counter(eager_model):
    d = model_dims(eager_model.config)
    assert d["confidence"] == "high" and d["gated_mlp"]
    for s in (1, 7, 40):
        ids = torch.randint(3, 200, (1, s))
        measured = counted(lambda ids=ids: eager_model(input_ids=ids))
        # the counter sees dense attention (masked afterwards) and logits for every position
        expected = s * (linear_per_position(d) + output_layer(d)) + attention(d, 0, s, causal=False)
        assert measured == expected


def test_decode_step_matches_flop_counter(eager_model):
    d = model_dims(eager_model.config)
    p = 25
    ids = torch.randint(3, 200, (1, p + 1))
    with torch.no_grad():
        cache = eager_model(input_ids=ids[:, :p], use_cache=True).past_key_values
    measured = counted(lambda: eager_model(input_ids=ids[:, p:], cache=cache, use_cache=True))
    assert measured == linear_per_position(d) + output_layer(d) + attention(d, p, 1)  # one position, p + 1 keys


def test_request_flops_structure(eager_model):
    d = model_dims(eager_model.config)
    prefill, decode = request_flops(d, 10, 5)
    assert prefill == 10 * linear_per_position(d) + attention(d, 0, 10) + output_layer(d)
    assert decode == 4 * (linear_per_position(d) + output_layer(d)) + attention(d, 10, 4)
    # causal attention grows linearly per position, not cubically
    assert attention(d, 0, 2) - attention(d, 0, 1) == attention(d, 1, 1)
    assert request_flops(d, 10, 0) == (0, 0)


def test_unknown_architecture_is_low_confidence():
    d = model_dims(
        {
            "model_type": "mystery",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 100,
        }
    )
    assert d["confidence"] == "low" and d["intermediate_size"] == 256
