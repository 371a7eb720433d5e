"""One stop set for every backend: the tokenizer's EOS and every ``eos_token_id`` of the checkpoint's generation
config, which is what vLLM 0.11.0 stops on by itself. A checkpoint whose generation config lists a second EOS
(as Llama 3 instruct models do) must end requests at the same token on PyTorch, vLLM and TensorRT-LLM."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import small_experiment
from llenergymeasure.backends.base import stop_token_ids

PROMPT = "the quick brown fox jumps over"


def test_stop_set_puts_the_tokenizer_eos_first():
    assert stop_token_ids(2, [9, 2, 5]) == [2, 5, 9]
    assert stop_token_ids(2, 2) == [2] and stop_token_ids(2, None) == [2] and stop_token_ids(None, [4]) == [4]


@pytest.fixture(scope="module")
def two_eos_model(tiny_model, tmp_path_factory):
    """The tiny model with a generation config that also ends on the token greedy decoding emits first for PROMPT."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        first = int(model(ids).logits[0, -1].argmax())
    assert first != tok.eos_token_id
    folder = tmp_path_factory.mktemp("two-eos") / "model"
    shutil.copytree(tiny_model, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, first]
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return str(folder), [tok.eos_token_id, first]


def _experiment(backend: str, model: str, tmp_path, forced: bool) -> dict:
    base = {
        "backend": backend,
        "model_name": model,
        "max_input_tokens": 32,
        "max_output_tokens": 6,
        "min_output_tokens": 6 if forced else 0,
        "num_input_prompts": 1,
    }
    if backend == "pytorch":
        base.update(device="cpu", fp_precision="float32")
    else:
        base["fp_precision"] = "float16" if backend == "tensorrt" else "float32"
    if backend == "tensorrt":
        base["tensorrt"] = {"max_batch_size": 1, "engine_cache_dir": str(tmp_path / "engines")}
    return small_experiment(base, {})


def _run(backend_name: str, model: str, tmp_path, forced: bool):
    from llenergymeasure.backends import create

    backend = create(_experiment(backend_name, model, tmp_path, forced), model)
    try:
        info = backend.load()
        out = backend.run([PROMPT], backend.plan([PROMPT]), seed=0)
        return info, out.requests[0]
    finally:
        backend.close()


@pytest.mark.parametrize("forced", [False, True], ids=["free", "forced-length"])
def test_every_backend_stops_on_the_generation_configs_eos(fake_vllm, fake_trt, two_eos_model, tmp_path, forced):
    model, stops = two_eos_model
    counts = {}
    for name in ("pytorch", "vllm", "tensorrt"):
        info, request = _run(name, model, tmp_path, forced)
        assert info["stop_token_ids"] == stops, name  # recorded with the result
        counts[name] = request.output_tokens
        if not forced:
            assert len(request.itl_s) == request.output_tokens - 1
    # free: every backend ends on the second EOS, its first greedy token (counted, as every backend counts its EOS);
    # forced: no stop token may end a request early
    assert counts == (dict.fromkeys(counts, 6) if forced else dict.fromkeys(counts, 1))
