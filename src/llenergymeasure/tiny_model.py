"""The embedded default model: a small random-weight Llama and a byte-level BPE tokenizer, built locally.

Nothing is downloaded. The build is deterministic (fixed seed, fixed training text), so every machine measures
the same model. The weights are random: the model produces real tokens at a realistic cost per token for its
size, not meaningful text. Its purpose is to make the whole pipeline run anywhere, including CI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

#: Names that select the embedded model in ``model_name``.
EMBEDDED_MODELS = {"lem-tiny-llama"}

#: Architecture of the embedded model (about 2.9 M parameters). Changing it changes what the name means.
TINY_LLAMA_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
VOCAB_SIZE = 1024
SEED = 1234

_TRAINING_TEXT = """
Measuring the energy of language model inference means counting joules over a well defined window while the
model generates tokens. The window starts after the model is loaded and warmed up, and it ends when the last
token of the last request has been produced. Energy per output token, throughput in tokens per second and the
latency of each request are reported with their methods, so that estimates are never mistaken for measurements.
A campaign repeats every configuration over several cycles, in an interleaved, grouped or shuffled order, with
thermal gaps between windows, and summarises the cycles with a mean, a standard deviation and a confidence
interval. Questions, stories, code, arithmetic, summaries and instructions make up the prompt set: what is the
capital of a country, write a function that sorts a list, explain why the sky looks blue, add 17 and 25, and so
on. The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. 0123456789 + - * / =
def main(): return [x for x in range(10) if x % 2 == 0]  # even numbers
""".strip()


def is_embedded(model_name: str) -> bool:
    return model_name in EMBEDDED_MODELS


def embedded_model_dir(results_dir: str | Path, name: str = "lem-tiny-llama") -> Path:
    """Where the workflow builds the embedded model (shared by every campaign under ``results_dir``)."""
    return Path(results_dir) / "models" / name


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _TRAINING_TEXT.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 8, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.padding_side = "left"
    return fast


def build_tiny_llama(out_dir: str | Path) -> Path:
    """Build the embedded model into ``out_dir`` (written to a temp folder first, then moved into place)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            dtype="float32",
            **TINY_LLAMA_CONFIG,
        )
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(tmp / "lem_model.json", "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "name": "lem-tiny-llama",
                    "weights": "random (seeded)",
                    "seed": SEED,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "architecture": {**TINY_LLAMA_CONFIG, "vocab_size": len(tokenizer)},
                },
                fh,
                indent=2,
            )
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
