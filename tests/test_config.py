"""Campaign validation: every bad input gets one line naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from llenergymeasure.campaign import load_campaign, resolve_campaign
from llenergymeasure.errors import ConfigError

GOOD = {
    "campaign_name": "t",
    "model": "lem-tiny-llama",
    "grid": {"backends": ["pytorch"], "shared": {"pytorch.batch_size": [1, 2]}},
}


def error_for(raw: dict, tmp_path) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_campaign(raw, tmp_path, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_defaults_are_filled(tmp_path):
    c = resolve_campaign(GOOD, tmp_path, tmp_path)
    assert c["execution"] == {
        "cycles": 3,
        "structure": "interleaved",
        "seed": 42,
        "config_gap_s": 60,
        "cycle_gap_s": 300,
        "precision_target": {
            "relative_half_width": None,
            "metric": "j_per_output_token",
            "min_cycles": 3,
            "max_cycles": 10,
        },
    }
    assert c["results_dir"] == "results"
    assert c["notifications"]["webhook_url"] is None


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"execution": {"structure": "interleave"}},
            ["execution.structure", "'interleave'", "interleaved, shuffled, grouped", "did you mean 'interleaved'"],
        ),
        ({"execution": {"cycles": 0}}, ["execution.cycles", "0", ">= 1"]),
        ({"execution": {"cycles": "three"}}, ["execution.cycles", "'three'", "integer"]),
        ({"execution": {"cycle": 3}}, ["unknown key 'execution.cycle'", "did you mean 'cycles'"]),
        ({"gird": {}}, ["unknown key 'gird'", "did you mean 'grid'"]),
        ({"notifications": {"webhook_url": "ftp://x"}}, ["notifications.webhook_url", "ftp://x"]),
        ({"campaign_name": "has space"}, ["campaign_name", "'has space'"]),
        ({"analysis": {"cv_threshold": 2}}, ["analysis.cv_threshold", "2", "<= 1"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(tmp_path, patch, expected):
    raw = {
        **GOOD,
        **{k: ({**GOOD.get(k, {}), **v} if isinstance(v, dict) and k in GOOD else v) for k, v in patch.items()},
    }
    msg = error_for(raw, tmp_path)
    for part in expected:
        assert part in msg, msg


def test_missing_name(tmp_path):
    raw = dict(GOOD)
    del raw["campaign_name"]
    assert "missing required key 'campaign_name'" in error_for(raw, tmp_path)


def test_no_experiments(tmp_path):
    assert "defines no experiments" in error_for({"campaign_name": "x"}, tmp_path)


def test_env_overrides_results_dir(tmp_path):
    c = resolve_campaign({**GOOD, "results_dir": "a"}, tmp_path, tmp_path, env={"LLM_ENERGY_RESULTS_DIR": "/elsewhere"})
    assert c["results_dir"] == "/elsewhere"


def test_user_config_fills_unset_keys_only(tmp_path):
    (tmp_path / ".lem-config.yaml").write_text(
        yaml.safe_dump({"results_dir": "mine", "thermal_gaps": {"between_experiments": 7, "between_cycles": 9}})
    )
    c = resolve_campaign({**GOOD, "execution": {"cycle_gap_s": 1}}, tmp_path, tmp_path, env={})
    assert c["results_dir"] == "mine"
    assert c["execution"]["config_gap_s"] == 7
    assert c["execution"]["cycle_gap_s"] == 1  # the campaign file wins


def test_user_config_unknown_key(tmp_path):
    (tmp_path / ".lem-config.yaml").write_text("result_dir: x\n")
    msg = error_for(GOOD, tmp_path)
    assert "unknown key 'result_dir'" in msg and "did you mean 'results_dir'" in msg


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("campaign_name: x\ngrid: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_campaign(path, tmp_path)
    assert "not valid YAML at line" in str(info.value) and "\n" not in str(info.value)


def test_compiled_and_reference_validators_agree_on_experiments():
    """The compiled validator answers first for every expanded experiment: it must accept exactly what jsonschema
    accepts (a disagreement would let a bad value through or reject a good one)."""
    import jsonschema

    from llenergymeasure.config import compiled_validator, load_schema

    fast = compiled_validator("campaign", "experiment")
    root = load_schema("campaign")
    ref = jsonschema.Draft202012Validator({"$ref": "#/$defs/experiment", "$defs": root["$defs"]})
    cases = [
        {"model_name": "m"},
        {
            "model_name": "m",
            "backend": "vllm",
            "vllm": {"max_num_seqs": 8, "speculative": {"method": "ngram", "prompt_lookup_max": 4}},
        },
        {"model_name": "m", "gpus": [0, 1]},
        {"model_name": "m", "gpus": [0, 0]},
        {"model_name": "m", "gpus": []},
        {"model_name": "m", "vllm": {"logit_bias": {"12": 1.5}}},
        {"model_name": "m", "vllm": {"logit_bias": {"x": 1.5}}},
        {"model_name": "m", "vllm": {"block_size": 24}},
        {"model_name": "m", "tensorrt": {"calibration": {"num_samples": 10}}},
        {"model_name": "m", "pytorch": {"batch_size": 0}},
        {"model_name": "m", "energy": {"cpu_tdp_w": 0}},
        {"model_name": "m", "extra": 1},
        {"model_name": "", "backend": "onnx"},
        {"model_name": "m", "random_seed": None, "dataset": {"name": "builtin"}},
    ]
    for case in cases:
        try:
            fast(case)
            fast_ok = True
        except Exception:  # noqa: BLE001
            fast_ok = False
        assert fast_ok == ref.is_valid(case), case


def test_did_you_mean_names_the_closest_choice_as_spelled():
    from llenergymeasure.errors import did_you_mean

    assert did_you_mean("cycels", ["cycles", "structure"]) == " (did you mean 'cycles'?)"
    assert did_you_mean("qwen2.5-0.5B", ["Qwen2.5-0.5B", "llama-3.2-1b"], cutoff=0.75, ignore_case=True) == (
        " (did you mean 'Qwen2.5-0.5B'?)"
    )
    assert did_you_mean("qwen2.5-0.5B", ["Qwen2.5-0.5B"], cutoff=0.99) == ""  # case counts unless ignored
    assert did_you_mean("zzz", ["cycles"]) == ""
