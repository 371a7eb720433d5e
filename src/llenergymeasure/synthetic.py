"""Synthetic-weight models (``no_weights: true``): a published architecture with seeded random weights.

The cost of inference per token depends on the architecture and the number formats, not on the values of the
weights, so hardware studies and GPU checks can measure a Llama-3.1-8B-shaped model without downloading it. The
architectures ship with the package (``data/architectures/*.json``: the dimensions of the published configs);
``model_name`` selects one by its short name or its Hugging Face id, or points to such a JSON file (or a
transformers ``config.json``). The model is built directly on the target device in the target dtype; prompts are
tokenised with the embedded byte-level tokenizer (only the first token ids of the large vocabulary are used).
Generated text is meaningless; token counts, shapes and timings are those of the real architecture.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .errors import ConfigError

ARCH_DIR = Path(__file__).resolve().parent / "data" / "architectures"
SEED = 1234


@functools.cache
def architectures() -> dict[str, dict]:
    """Shipped architectures by short name."""
    out = {}
    for path in sorted(ARCH_DIR.glob("*.json")):
        spec = json.loads(path.read_text())
        out[spec["name"]] = spec
    return out


def resolve_architecture(model_name: str) -> dict:
    """The architecture spec for ``model_name`` (short name, HF id, or a JSON file); ConfigError if unknown."""
    specs = architectures()
    if model_name in specs:
        return specs[model_name]
    for spec in specs.values():
        if model_name.lower() in (a.lower() for a in spec.get("aliases", [])):
            return spec
    path = Path(model_name).expanduser()
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
            raise ConfigError(f"key 'model_name' = '{model_name}': the file is not readable JSON ({exc})") from None
        config = data.get("config", data) if isinstance(data, dict) else None
        if not isinstance(config, dict):
            raise ConfigError(
                f"key 'model_name' = '{model_name}': the JSON file holds no transformers config (a mapping)"
            )
        if "model_type" not in config:
            raise ConfigError(f"key 'model_name' = '{model_name}': the JSON file has no 'model_type'")
        return {"name": data.get("name", path.stem), "aliases": [], "config": config}
    from .errors import did_you_mean

    known = ", ".join(sorted(specs))
    names = [n for spec in specs.values() for n in (spec["name"], *spec.get("aliases", []))]
    hint = did_you_mean(model_name, names, cutoff=0.75, ignore_case=True)
    raise ConfigError(
        f"key 'model_name' = '{model_name}' with no_weights = true; allowed: {known}, their Hugging Face ids, "
        f"or a JSON file with a transformers config{hint}"
    )


def build_config(spec: dict):
    from transformers import AutoConfig

    fields = {
        k: v for k, v in spec["config"].items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")
    }
    return AutoConfig.for_model(spec["config"]["model_type"], **fields)


def build(spec: dict, dtype, device: str, attn_implementation: str):
    """(model, tokenizer): seeded random weights, created on ``device`` in ``dtype`` (no copy through the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from .tiny_model import _train_tokenizer

    tokenizer = _train_tokenizer()
    config = build_config(spec)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer
