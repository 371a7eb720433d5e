"""Decoder presets decode the same way on every path into a measurement (campaign grid, experiment files, the job's
params, ``lem run``) and reach every backend's generate/engine call with the preset's values."""

from __future__ import annotations

import pytest
import yaml

from conftest import QUICK_MEASUREMENT
from llenergymeasure.campaign import complete_config, expand, resolve_campaign, sparse_config
from llenergymeasure.config import DECODER_PRESETS, schema_problems
from llenergymeasure.run import load_experiment

#: what each preset means once resolved (schema defaults for the fields a preset leaves open)
EXPECTED = {
    name: {"temperature": 1.0, "do_sample": True, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, **values}
    for name, values in DECODER_PRESETS.items()
}


def decoder(config: dict) -> dict:
    return {k: v for k, v in config["decoder"].items() if k != "preset"}


def test_validation_leaves_the_config_as_written():
    raw = {"model_name": "m", "decoder": {"preset": "creative"}}
    assert schema_problems(raw, "campaign", ref="experiment") == []
    assert raw == {"model_name": "m", "decoder": {"preset": "creative"}}  # no schema default written into it


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_every_path_resolves_the_preset(tmp_path, preset):
    (tmp_path / "exp.yaml").write_text(
        yaml.safe_dump({"model_name": "lem-tiny-llama", "decoder": {"preset": preset}, "max_output_tokens": 9})
    )
    campaign = resolve_campaign(
        {
            "campaign_name": "p",
            "model": "lem-tiny-llama",
            "configs": ["exp.yaml"],
            "grid": {
                "backends": ["pytorch", "vllm", "tensorrt"],
                "shared": {"decoder.preset": preset, "fp_precision": "float16"},
            },
        },
        tmp_path,
        tmp_path,
        env={},
    )
    experiments = expand(campaign).experiments
    assert len(experiments) == 4  # the file and one grid experiment per backend
    for e in experiments:
        assert decoder(e.config) == EXPECTED[preset], e.source
        assert decoder(complete_config(e.params)) == EXPECTED[preset]  # what the measurement job gets back
    cli = load_experiment(None, ["model_name=lem-tiny-llama", f"decoder.preset={preset}"])
    assert decoder(cli) == EXPECTED[preset]


def test_explicit_fields_win_over_the_preset(tmp_path):
    campaign = resolve_campaign(
        {
            "campaign_name": "p",
            "model": "lem-tiny-llama",
            "grid": {"backends": ["pytorch"], "shared": {"decoder.preset": "creative", "decoder.top_p": 0.5}},
        },
        tmp_path,
        tmp_path,
        env={},
    )
    (e,) = expand(campaign).experiments
    assert decoder(e.config) == {**EXPECTED["creative"], "top_p": 0.5}


def _grid_config(tmp_path, backend: str, preset: str, model: str) -> dict:
    """One experiment through campaign expansion (schema validation included), then as the job completes it."""
    shared = {
        **{f"{k}.{kk}": vv for k, v in QUICK_MEASUREMENT.items() if k != "decoder" for kk, vv in v.items()},
        "decoder.preset": preset,
        "max_input_tokens": 32,
        "max_output_tokens": 4,
        "num_input_prompts": 2,
    }
    shared.update({"fp_precision": "float32", "device": "cpu"} if backend == "pytorch" else {"fp_precision": "float16"})
    if backend == "tensorrt":
        shared["tensorrt.engine_cache_dir"] = str(tmp_path / "engines")
    campaign = resolve_campaign(
        {"campaign_name": "p", "model": model, "grid": {"backends": [backend], "shared": shared}},
        tmp_path,
        tmp_path,
        env={},
    )
    (e,) = expand(campaign).experiments
    return complete_config(sparse_config(e.config))


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_pytorch_generate_receives_the_preset(tmp_path, tiny_model, preset):
    from llenergymeasure.backends.pytorch import PyTorchBackend

    backend = PyTorchBackend(_grid_config(tmp_path, "pytorch", preset, tiny_model), tiny_model)
    backend.load()
    kw = backend._generate_kwargs(4, 0)
    want = EXPECTED[preset]
    assert kw["do_sample"] is want["do_sample"] and kw["repetition_penalty"] == want["repetition_penalty"]
    if want["do_sample"]:
        assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (want["temperature"], want["top_p"], want["top_k"])
    else:
        assert kw["temperature"] is None and kw["top_p"] is None and kw["top_k"] is None  # greedy


def _engine_sampling_params(backend_cls, tmp_path, tiny_model, preset):
    """The sampling parameters a loaded engine backend builds for a batch under ``preset``, checked against the
    preset where the engines agree (the repetition penalty; temperature, top-p and top-k when it samples)."""
    backend = backend_cls(_grid_config(tmp_path, backend_cls.name, preset, tiny_model), tiny_model)
    backend.load()
    try:
        params = backend.sampling_params(4, 0, 1)
    finally:
        backend.close()
    want = EXPECTED[preset]
    assert params.repetition_penalty == want["repetition_penalty"]
    if want["do_sample"]:
        assert (params.temperature, params.top_p, params.top_k) == (want["temperature"], want["top_p"], want["top_k"])
    return params, want


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_vllm_sampling_receives_the_preset(fake_vllm, tmp_path, tiny_model, preset):
    from llenergymeasure.backends.vllm import VllmBackend

    params, want = _engine_sampling_params(VllmBackend, tmp_path, tiny_model, preset)
    if not want["do_sample"]:
        assert params.temperature == 0.0  # vLLM's greedy


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_tensorrt_sampling_receives_the_preset(fake_trt, tmp_path, tiny_model, preset):
    from llenergymeasure.backends.tensorrt import TensorRTBackend

    params, want = _engine_sampling_params(TensorRTBackend, tmp_path, tiny_model, preset)
    if not want["do_sample"]:
        assert params._greedy_decoding and params.top_k == 1
