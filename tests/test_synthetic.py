"""Synthetic-weight models (no_weights: true) from shipped architectures."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_experiment
from llenergymeasure.errors import ConfigError
from llenergymeasure.synthetic import architectures, build_config, resolve_architecture


def parameter_count(spec: dict) -> int:
    """Parameters of the architecture, counted on the meta device (no memory allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(spec))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, published",
    [("llama-3.2-1b", 1.2358e9), ("llama-3.1-8b", 8.030e9), ("qwen2.5-0.5b", 0.4940e9)],
)
def test_shipped_architectures_have_the_published_size(name, published):
    assert parameter_count(architectures()[name]) == pytest.approx(published, rel=0.002)


def test_names_and_aliases():
    assert resolve_architecture("meta-llama/Llama-3.1-8B")["name"] == "llama-3.1-8b"
    assert resolve_architecture("qwen/qwen2.5-0.5b-instruct")["name"] == "qwen2.5-0.5b"
    with pytest.raises(ConfigError, match=r"key 'model_name' = 'gpt-5' with no_weights = true; allowed: llama-3.1-8b"):
        resolve_architecture("gpt-5")


def test_unknown_architecture_in_grid_is_dropped_with_reason(tmp_path):
    from llenergymeasure.campaign import expand, resolve_campaign

    c = resolve_campaign(
        {
            "campaign_name": "s",
            "grid": {"backends": ["pytorch"], "models": ["llama-3.2-1b", "nope"], "shared": {"no_weights": True}},
        },
        tmp_path,
        tmp_path,
        env={},
    )
    exp = expand(c)
    assert [e.config["model_name"] for e in exp.experiments] == ["llama-3.2-1b"]
    assert "key 'model_name' = 'nope' with no_weights = true" in exp.dropped[0][1]


def test_measurement_with_synthetic_weights(tmp_path):
    from llenergymeasure.measure import run_experiment

    arch = tmp_path / "small-qwen.json"
    arch.write_text(
        json.dumps(
            {
                "name": "small-qwen",
                "config": {
                    "model_type": "qwen2",
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "vocab_size": 5000,
                    "max_position_embeddings": 512,
                },
            }
        )
    )
    cfg = tiny_experiment(model_name=str(arch), no_weights=True, warmup={"enabled": False})
    r = run_experiment(cfg, "syn", 1, str(arch), None)
    assert r["model"]["weights"] == "random (seeded), no_weights" and r["model"]["architecture"] == "qwen2"
    assert r["tokens"]["output_tokens"] == 6 * 8
    assert r["flops"]["model_dims"]["vocab_size"] == 5000 and r["flops"]["confidence"] == "high"
