"""Files written for lem v3: its keys read as this tool's (aliases resolve to exactly the same experiment and id),
keys that change nothing ignored with a note, keys lem never read or features not offered refused with the
replacement, every problem of a file named in one run, and no traceback anywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, job_counts, snakemake
from llenergymeasure.campaign import expand, plan, resolve_campaign, sparse_config
from llenergymeasure.cli import main
from llenergymeasure.errors import ConfigError
from llenergymeasure.run import load_experiment

LEM = REPO / "tests" / "data" / "lem_v3"


def campaign(tmp_path, **raw):
    return resolve_campaign({"campaign_name": "t", "model": "lem-tiny-llama", **raw}, tmp_path, tmp_path, env={})


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------ aliases


def test_a_lem_v3_experiment_resolves_to_exactly_the_new_keys_experiment():
    notes: list[str] = []
    old = load_experiment(str(LEM / "pytorch_v3.yaml"), [], notes)
    new = load_experiment(str(LEM / "pytorch_new_keys.yaml"), [])
    assert old == new and sparse_config(old) == sparse_config(new)
    assert new["num_input_prompts"] == 12 and new["timeline"] == {"enabled": True, "save": True, "interval_ms": 250}
    where = str(LEM / "pytorch_v3.yaml")
    assert notes == [
        f"{where}: 'schema_version' is ignored: the version of lem v3's config schema; files here carry none",
        f"{where}: 'dataset.sample_size' is lem v3's name for 'num_input_prompts': read as num_input_prompts = 12 (rename it)",
        f"{where}: 'pytorch.low_cpu_mem_usage' is ignored: it is how transformers loads models here anyway",
        f"{where}: 'pytorch.use_bettertransformer' is ignored: BetterTransformer, switched off",
        f"{where}: 'timeseries.enabled' is lem v3's name for 'timeline.enabled': read as timeline.enabled = true (rename it)",
        f"{where}: 'timeseries.save' is lem v3's name for 'timeline.save': read as timeline.save = true (rename it)",
        f"{where}: 'timeseries.sample_interval_ms' is lem v3's name for 'timeline.interval_ms': read as timeline.interval_ms = 250 (rename it)",
        f"{where}: 'streaming' is ignored: lem v3's streaming mode, switched off; latency (TTFT, ITL) is measured in every run here, from token arrivals",
        f"{where}: 'traffic_simulation' is ignored: lem v3's traffic simulation, switched off",
    ]


def test_the_same_experiment_file_in_a_campaign_gets_the_same_id(tmp_path):
    for name in ("pytorch_v3.yaml", "pytorch_new_keys.yaml"):
        shutil.copy(LEM / name, tmp_path / name)
    old = expand(campaign(tmp_path, configs=["pytorch_v3.yaml"]))
    new = expand(campaign(tmp_path, configs=["pytorch_new_keys.yaml"]))
    assert [e.experiment_id for e in old.experiments] == [e.experiment_id for e in new.experiments]
    assert old.experiments[0].config == new.experiments[0].config
    assert (
        "'configs[pytorch_v3.yaml].dataset.sample_size' is lem v3's name for 'configs[pytorch_v3.yaml].num_input_prompts': "
        "read as configs[pytorch_v3.yaml].num_input_prompts = 12 (rename it)" in old.notes
    )
    assert new.notes == []


@pytest.mark.parametrize(
    ("lem", "new"),
    [
        (
            {
                "prompts": {
                    "type": "huggingface",
                    "dataset": "gsm8k",
                    "split": "test",
                    "column": "question",
                    "sample_size": 20,
                }
            },
            {"dataset": {"name": "gsm8k", "split": "test", "column": "question"}, "num_input_prompts": 20},
        ),
        ({"prompts": {"type": "file", "path": "prompts.txt"}}, {"dataset": {"name": "prompts.txt"}}),
        ({"gpus": 0}, {"gpus": [0]}),
        ({"timeseries": {"sample_interval_ms": 500}}, {"timeline": {"interval_ms": 500}}),
        (
            {
                "dataset": None,
                "vllm": None,
                "tensorrt": None,
                "pytorch": {"cache_implementation": None, "torch_compile_backend": None},
            },
            {},
        ),
        (
            {"dataset": {"name": "alpaca", "sample_size": 30}, "num_input_prompts": 30},
            {"dataset": {"name": "alpaca"}, "num_input_prompts": 30},
        ),
    ],
)
def test_each_alias_resolves_to_the_config_of_its_new_key(tmp_path, lem, new):
    base = {"model_name": "lem-tiny-llama", "device": "cpu"}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**base, **lem}))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({**base, **new}))
    notes: list[str] = []
    old = load_experiment(str(tmp_path / "old.yaml"), [], notes)
    assert old == load_experiment(str(tmp_path / "new.yaml"), [])
    assert notes and all("lem v3" in n or "read as" in n for n in notes)


def test_campaign_keys_of_lem_v3(tmp_path):
    c = campaign(
        tmp_path,
        schema_version="3.0.0",
        io={"results_dir": "elsewhere", "state_dir": ".state"},
        grid={
            "backends": ["pytorch"],
            "shared": {"dataset.sample_size": [3, 5], "device": "cpu", "timeseries.save": True},
        },
        execution={"cycles": 2, "warmup_prompts": 5, "warmup_timeout_seconds": 30},
        cold_start={"force_cold_start": True},
        group_by=["backend"],
        health_check={"enabled": True},
        daemon={"enabled": False, "at": "02:00"},
        experiments=[],
    )
    assert c["results_dir"] == "elsewhere" and "io" not in c and "cold_start" not in c
    exp = expand(c)
    assert sorted(e.config["num_input_prompts"] for e in exp.experiments) == [3, 5]
    assert all(e.config["timeline"]["save"] for e in exp.experiments)
    same = expand(
        campaign(
            tmp_path,
            results_dir="elsewhere",
            grid={
                "backends": ["pytorch"],
                "shared": {"num_input_prompts": [3, 5], "device": "cpu", "timeline.save": True},
            },
            execution={"cycles": 2},
        )
    )
    assert [e.experiment_id for e in exp.experiments] == [e.experiment_id for e in same.experiments]
    notes = "\n".join(c["_notes"])
    for key in (
        "schema_version",
        "io.state_dir",
        "execution.warmup_prompts",
        "execution.warmup_timeout_seconds",
        "cold_start",
        "group_by",
        "health_check",
        "daemon",
        "experiments",
    ):
        assert f"'{key}' is ignored: " in notes, key
    assert "'io.results_dir' is lem v3's name for 'results_dir'" in notes
    assert "'grid.shared.dataset.sample_size' is lem v3's name for 'grid.shared.num_input_prompts'" in notes
    assert "'execution.warmup_prompts' is ignored: lem v3 displayed it but never ran a campaign warm-up" in notes
    assert "'cold_start' is ignored: lem v3 accepted it but it had no effect" in notes


def test_the_docker_block_of_lem_config_is_ignored_with_a_pointer_to_containers(tmp_path):
    shutil.copy(LEM / "lem-config.yaml", tmp_path / ".lem-config.yaml")
    c = campaign(tmp_path, grid={"backends": ["pytorch"]})
    assert c["results_dir"] == "lem-results" and c["execution"]["config_gap_s"] == 3.0
    assert [n for n in c["_notes"] if "docker" in n] == [
        ".lem-config.yaml: 'docker' is ignored: lem v3's container strategy; here each measurement runs in its backend's "
        "image (the campaign's containers:, with --sdm apptainer)"
    ]


# ------------------------------------------------------------------------------------------------ traffic simulation

NOT_COMPARABLE = (
    "'traffic_simulation': lem v3 slept before each batch but the first (the gap drawn for its mode and target_qps, "
    "inside the energy window) and then ran the batch; here each request is submitted at its own arrival time into a "
    "running engine, so results measured under lem v3's traffic simulation are not comparable with these"
)


@pytest.mark.parametrize(
    ("traffic", "load", "read_as", "dropped"),
    [
        (
            {"enabled": True, "mode": "poisson", "target_qps": 4.0, "seed": 7},
            {"arrival": "poisson", "rate_per_s": 4.0, "seed": 7},
            "load.arrival = poisson, load.rate_per_s = 4.0, load.seed = 7",
            [],
        ),
        (  # lem's defaults: mode poisson, target_qps 1.0, no seed (this tool's seed 0)
            {"enabled": True},
            {"arrival": "poisson", "rate_per_s": 1.0},
            "load.arrival = poisson, load.rate_per_s = 1.0",
            [],
        ),
        (
            {"enabled": True, "mode": "constant", "target_qps": 2, "seed": 5},
            {"arrival": "constant", "rate_per_s": 2},
            "load.arrival = constant, load.rate_per_s = 2",
            [
                "'traffic_simulation.seed' = 5 is dropped: constant arrivals have no random part (load.seed applies "
                "to poisson and gamma)"
            ],
        ),
    ],
)
def test_an_enabled_traffic_simulation_is_read_as_the_load_section(tmp_path, traffic, load, read_as, dropped):
    """The same experiment (and id) as the load section written out, with a note saying what it is read as and
    that lem's numbers are not comparable (it slept between batches), and one for a constant seed that goes."""
    base = {"model_name": "lem-tiny-llama", "backend": "vllm"}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**base, "traffic_simulation": traffic}))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({**base, "load": load}))
    notes: list[str] = []
    old = load_experiment(str(tmp_path / "old.yaml"), [], notes)
    new = load_experiment(str(tmp_path / "new.yaml"), [])
    assert old == new and sparse_config(old) == sparse_config(new)
    assert old["load"]["arrival"] == load["arrival"] and old["load"]["rate_per_s"] == load["rate_per_s"]
    assert old["load"]["seed"] == load.get("seed", 0)
    where = str(tmp_path / "old.yaml")
    assert notes == [
        f"{where}: 'traffic_simulation' (lem v3's traffic simulation) is read as {read_as} (write that instead)",
        f"{where}: {NOT_COMPARABLE}",
        *(f"{where}: {line}" for line in dropped),
    ]


@pytest.mark.parametrize(
    ("traffic", "written", "allowed"),
    [
        (
            {"enabled": True, "mode": "burst", "target_qps": 2},
            "{enabled: true, mode: burst, target_qps: 2}",
            "mode poisson | constant, read as load: {arrival: poisson | constant, rate_per_s: N, seed: S} (seed for "
            "poisson only); for other arrivals write load: {arrival: gamma | closed | trace, ...} (config/README.md, "
            "Serving load)",
        ),
        (
            {"enabled": True, "target_qps": 2, "burst": 3},
            "{burst: 3, enabled: true, target_qps: 2}",  # as YAML wrote the file: keys sorted
            "the keys enabled, mode, target_qps, seed of lem v3's section (not burst), read as load: {arrival: "
            "poisson | constant, rate_per_s: N, seed: S} (seed for poisson only)",
        ),
    ],
)
def test_a_traffic_simulation_the_load_section_cannot_represent_is_refused(tmp_path, traffic, written, allowed):
    """One line naming the key, its value and what is allowed; nothing of it is measured."""
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model_name": "lem-tiny-llama", "traffic_simulation": traffic}))
    with pytest.raises(ConfigError) as info:
        load_experiment(str(tmp_path / "e.yaml"), [])
    assert info.value.problems == [
        f"{tmp_path / 'e.yaml'}: key 'traffic_simulation' = {written} (lem v3's traffic simulation) has no "
        f"exact equivalent here; allowed here: {allowed}"
    ]


def test_a_traffic_simulation_switched_off_is_ignored_in_a_file_and_in_a_grid(tmp_path):
    (tmp_path / "e.yaml").write_text(
        yaml.safe_dump(
            {"model_name": "lem-tiny-llama", "traffic_simulation": {"enabled": False, "mode": "constant", "seed": 3}}
        )
    )
    notes: list[str] = []
    cfg = load_experiment(str(tmp_path / "e.yaml"), [], notes)
    assert cfg["load"]["arrival"] == "offline"
    assert notes == [
        f"{tmp_path / 'e.yaml'}: 'traffic_simulation' is ignored: lem v3's traffic simulation, switched off"
    ]
    c = campaign(
        tmp_path, grid={"backends": ["pytorch"], "shared": {"device": "cpu", "traffic_simulation": {"enabled": False}}}
    )
    assert "'grid.shared.traffic_simulation' is ignored: lem v3's traffic simulation, switched off" in c["_notes"]
    assert [e.config["load"]["arrival"] for e in expand(c).experiments] == ["offline"]


# ------------------------------------------------------------------------------------------------ refusals


def test_every_problem_of_a_pre_v3_file_is_named_with_its_replacement():
    with pytest.raises(ConfigError) as info:
        load_experiment(str(LEM / "pre_v3.yaml"), [])
    where = str(LEM / "pre_v3.yaml")
    never = "a key of lem before v3, which lem v3 no longer read: a file setting it measured"
    assert info.value.problems == [
        f"{where}: key 'batching' = {{strategy: dynamic, batch_size: 6}}: {never} batch size 1; allowed here: "
        "pytorch: {batch_size: 6, batching_strategy: dynamic, max_tokens_per_batch: N (the token budget the dynamic strategies need here)}",
        f"{where}: key 'max_new_tokens' = 48: {never} up to max_output_tokens new tokens (128 unless set); allowed here: max_output_tokens: 48",
        f"{where}: key 'batch_size' = 3: {never} batch size 1; allowed here: pytorch.batch_size: 3",
        f"{where}: key 'decoder.min_p' = 0.1: lem v3's decoder has no min_p and dropped it; allowed here: pytorch.min_p: 0.1",
        f"{where}: key 'sharding' = {{strategy: tensor_parallel, num_shards: 4}}: {never} an unsharded model; allowed here: "
        "backend: vllm with vllm: {tensor_parallel_size: 4} or backend: tensorrt with tensorrt: {tp_size: 4}; "
        "PyTorch here runs data parallel only (pytorch.num_processes), one GPU per process",
        f"{where}: key 'streaming' = true: lem v3's streaming mode is not offered here: latency (TTFT, ITL) is measured in every "
        "run, from token arrivals; allowed here: one request at a time, as lem's streaming mode ran them, is pytorch.batch_size: 1",
        f"{where}: key 'num_cycles' = 5: {never} one cycle; campaigns own repetition; allowed here: execution.cycles in the campaign file",
        f"{where}: key '_extends' = base.yaml: lem v3's inheritance between files is not offered here; allowed here: the base "
        "file's keys copied in; values every experiment shares belong in the campaign (grid.shared, dataset, num_samples)",
    ]


def test_a_lem_v3_campaign_names_grid_axes_with_the_grid_to_write(tmp_path):
    shutil.copy(LEM / "campaign_v3.yaml", tmp_path / "c.yaml")
    from llenergymeasure.campaign import load_campaign

    with pytest.raises(ConfigError) as info:
        load_campaign(tmp_path / "c.yaml", tmp_path)
    assert info.value.problems == [
        f"{tmp_path / 'c.yaml'}: key 'grid.axes' = {{batch_size: [1, 2], fp_precision: [float32]}}: lem v3 never read it "
        "(its grid took shared and backend_overrides), so these axes were never measured; allowed here: "
        "grid.shared: {fp_precision: [float32]}; grid.backend_overrides: {pytorch: {batch_size: [1, 2]}}"
    ]


def test_the_fix_the_hint_gives_is_accepted(tmp_path):
    """Writing what a refusal says to write makes the campaign valid: the hints are the replacement, not a guess."""
    data = yaml.safe_load((LEM / "campaign_v3.yaml").read_text())
    del data["grid"]["axes"]
    data["grid"]["shared"] = {"fp_precision": ["float32"], "device": "cpu"}
    data["grid"]["backend_overrides"] = {"pytorch": {"batch_size": [1, 2]}}
    c = resolve_campaign(data, tmp_path, tmp_path, env={})
    assert sorted(e.config["pytorch"]["batch_size"] for e in expand(c).experiments) == [1, 2]


@pytest.mark.parametrize(
    ("lem", "expected"),
    [
        ({"max_new_tokens": 5}, "allowed here: max_output_tokens: 5"),
        ({"cache_implementation": "static"}, "(did you mean 'pytorch.cache_implementation'?)"),
        ({"pytorch": {"cache_implementaton": "static"}}, "(did you mean 'cache_implementation'?)"),
        ({"decoder": {"no_repeat_ngram_size": 3}}, "allowed here: pytorch.no_repeat_ngram_size: 3"),
        ({"backend": "vllm", "batch_size": 64}, "allowed here: vllm.max_num_seqs: 64"),
        ({"backend": "vllm", "decoder": {"min_p": 0.2}}, "allowed here: vllm.min_p: 0.2"),
        ({"save_outputs": True}, "key 'save_outputs' = true: lem v3's saved outputs are not offered here"),
        ({"pytorch": {"low_cpu_mem_usage": False}}, "transformers' low-memory loading cannot be switched off here"),
        ({"pytorch": {"beam_search": {"enabled": True, "num_beams": 4}}}, "beam search is not offered here"),
        (
            {"dataset": {"name": "alpaca", "sample_size": 10}, "num_input_prompts": 50},
            "key 'dataset.sample_size' = 10 is lem v3's name for 'num_input_prompts' (lem v3 took the prompt count from it), which "
            "the file also sets, to 50: keep one (lem v3 used 'dataset.sample_size')",
        ),
        (
            {"prompts": {"type": "huggingface", "dataset": "alpaca", "shuffle": True, "sample_size": 8}},
            "allowed here: dataset: {name: alpaca, shuffle: true} with num_input_prompts: 8 (shuffled by this tool's own seeded shuffle",
        ),
        (
            {"timeseries": {"sample_interval_ms": 50}},
            "key 'timeline.interval_ms' = 50 is out of range; allowed: >= 100 (written as 'timeseries.sample_interval_ms', lem v3's name)",
        ),
    ],
)
def test_hints_point_to_what_the_key_meant(tmp_path, lem, expected):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model_name": "lem-tiny-llama", **lem}))
    with pytest.raises(ConfigError) as info:
        load_experiment(str(tmp_path / "e.yaml"), [])
    assert expected in str(info.value), str(info.value)
    assert "did you mean 'max_input_tokens'" not in str(info.value) and "did you mean 'attn_implementation'" not in str(
        info.value
    )


def test_grid_keys_of_lem_are_refused_with_grid_hints(tmp_path):
    with pytest.raises(ConfigError) as info:
        campaign(
            tmp_path,
            grid={
                "backends": ["pytorch", "vllm"],
                "shared": {"batch_size": [1, 8], "max_new_tokens": 16, "streaming": [False]},
            },
        )
    assert info.value.problems == [
        "key 'grid.shared.batch_size' = [1, 8]: a key of lem before v3, which lem v3 no longer read: a file setting it measured "
        "batch size 1; allowed here: grid.backend_overrides: {pytorch: {batch_size: [1, 8]}, vllm: {max_num_seqs: [1, 8]}}",
        "key 'grid.shared.max_new_tokens' = 16: a key of lem before v3, which lem v3 no longer read: a file setting it measured "
        "up to max_output_tokens new tokens (128 unless set); allowed here: grid.shared.max_output_tokens: 16",
    ]


def test_a_problem_of_a_renamed_grid_key_says_how_the_file_wrote_it(tmp_path):
    c = campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {"timeseries.sample_interval_ms": [50, 200]}})
    with pytest.raises(ConfigError) as info:
        expand(c)
    assert info.value.problems == [
        "key 'grid.shared.timeline.interval_ms' = 50 is out of range; allowed: >= 100 "
        "(written as 'grid.shared.timeseries.sample_interval_ms', lem v3's name)"
    ]


def test_every_problem_of_a_campaign_its_files_and_grid_in_one_run(tmp_path):
    (tmp_path / "a.yaml").write_text("model_name: lem-tiny-llama\nmax_new_tokens: 8\npytorch: {batch_size: 0}\n")
    (tmp_path / "b.yaml").write_text(
        "model_name: lem-tiny-llama\ndevice: cpu\nmin_output_tokens: 9\nmax_output_tokens: 4\n"
    )
    raw = {
        "campaign_name": "t",
        "model": "lem-tiny-llama",
        "configs": ["a.yaml", "b.yaml", "gone.yaml"],
        "grid": {"backends": ["pytorch"], "shared": {"decoder.temperature": [0.5, 3]}},
        "execution": {"cycles": 0, "structure": "interleave"},
    }
    with pytest.raises(ConfigError) as info:
        resolve_campaign(raw, tmp_path, tmp_path, env={})
    assert info.value.problems == [
        "key 'execution.cycles' = 0 is out of range; allowed: >= 1",
        "key 'execution.structure' = 'interleave' is not allowed; allowed: interleaved, shuffled, grouped (did you mean 'interleaved'?)",
        f"file '{tmp_path / 'gone.yaml'}' does not exist",
        "key 'configs[a.yaml].max_new_tokens' = 8: a key of lem before v3, which lem v3 no longer read: a file setting it measured "
        "up to max_output_tokens new tokens (128 unless set); allowed here: max_output_tokens: 8",
        "key 'configs[a.yaml].pytorch.batch_size' = 0 is out of range; allowed: >= 1",
        "configs[b.yaml]: min_output_tokens = 9 is larger than max_output_tokens = 4",
        "key 'grid.shared.decoder.temperature' = 3 is out of range; allowed: <= 2",
    ]


def test_one_file_with_several_wrong_values_names_them_all(tmp_path):
    (tmp_path / "e.yaml").write_text(
        "model_name: lem-tiny-llama\nfp_precision: fp8\nmax_input_tokens: 0\nwarmup: {mode: quick, max_prompt: 3}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_experiment(str(tmp_path / "e.yaml"), [])
    lines = [p.split(": ", 1)[1] for p in info.value.problems]
    assert lines == [
        "key 'fp_precision' = 'fp8' is not allowed; allowed: float32, float16, bfloat16",
        "key 'max_input_tokens' = 0 is out of range; allowed: >= 1",
        "key 'warmup.mode' = 'quick' is not allowed; allowed: full, cv, off",
        "unknown key 'warmup.max_prompt' (value 3); allowed keys here: convergence_detection, cv_threshold, enabled, max_prompts, "
        "min_prompts, mode, window_size (did you mean 'max_prompts'?)",
    ]


def test_semantic_problems_are_all_named(tmp_path):
    (tmp_path / "e.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": "lem-tiny-llama",
                "device": "cpu",
                "gpus": [1],
                "min_output_tokens": 9,
                "max_output_tokens": 4,
                "decoder": {"do_sample": False, "top_k": 5},
                "timeline": {"enabled": False, "interval_ms": 200},
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_experiment(str(tmp_path / "e.yaml"), [])
    text = str(info.value)
    for part in (
        "min_output_tokens = 9 is larger",
        "decoder.top_k = 5 shapes sampling",
        "gpus = [1] selects CUDA devices",
        "timeline.interval_ms = 200 has no effect",
    ):
        assert part in text, text
    assert len(info.value.problems) == 4


def test_lem_run_says_a_campaign_is_not_an_experiment(tmp_path, capsys):
    shutil.copy(LEM / "campaign_v3.yaml", tmp_path / "c.yaml")
    code, _, err = cli(capsys, "run", str(tmp_path / "c.yaml"))
    assert code == 1 and err.count("\n") == 1 and "is a campaign (it has campaign_name), not an experiment" in err


@pytest.mark.parametrize(("argv", "problems"), [(["run", "pre_v3.yaml"], 8), (["validate", "campaign_v3.yaml"], 1)])
def test_no_traceback_for_any_lem_file_and_every_problem_named(argv, problems):
    run = subprocess.run(
        [sys.executable, "-m", "llenergymeasure.cli", *argv], cwd=LEM, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == problems and all(x.startswith(("lem validate: ", "Configuration error: ")) for x in lines), (
        run.stderr
    )


@pytest.mark.workflow
def test_snakemake_reads_a_lem_v3_campaign_and_names_every_problem(workflow_dir):
    for name in ("campaign_v3.yaml", "pytorch_v3.yaml", "pre_v3.yaml"):
        shutil.copy(LEM / name, workflow_dir / name)
    fixed = yaml.safe_load((LEM / "campaign_v3.yaml").read_text())
    fixed["grid"] = {"backends": ["pytorch"], "shared": {"device": "cpu"}}
    fixed["configs"] = ["pytorch_v3.yaml"]
    (workflow_dir / "fixed.yaml").write_text(yaml.safe_dump(fixed))
    run = snakemake(workflow_dir, "-n", "--config", "campaign=fixed.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "  note: 'cold_start' is ignored: lem v3 accepted it but it had no effect" in run.stderr
    assert (
        "  note: 'configs[pytorch_v3.yaml].timeseries.save' is lem v3's name for 'configs[pytorch_v3.yaml].timeline.save'"
        in run.stderr
    )
    fixed["configs"] = ["pytorch_v3.yaml", "pre_v3.yaml"]
    (workflow_dir / "broken.yaml").write_text(yaml.safe_dump(fixed))
    run = snakemake(workflow_dir, "-n", "--config", "campaign=broken.yaml")
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    assert len(lines) == 8 and all(
        x.startswith("Configuration error: broken.yaml: key 'configs[pre_v3.yaml].") for x in lines
    ), lines


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (
            {
                "backend": "vllm",
                "vllm": {
                    "swap_space": 8,
                    "disable_custom_all_reduce": True,
                    "distributed_backend": "ray",
                    "max_model_len": 64,
                },
            },
            [
                "vllm.swap_space = 8",
                "vllm.disable_custom_all_reduce applies to tensor-parallel engines",
                "vllm.distributed_backend = ray",
                "vllm.max_model_len = 64",
            ],
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"builder_opt_level": 5, "max_input_len": 8, "num_draft_tokens": 3}},
            ["tensorrt.num_draft_tokens = 3", "tensorrt.max_input_len = 8", "tensorrt.builder_opt_level = 5"],
        ),
        (
            {"pytorch": {"load_in_4bit": True, "load_in_8bit": True, "batching_strategy": "dynamic"}, "adapter": "a/b"},
            [
                "mutually exclusive",
                "adapter (LoRA) is supported on backend vllm only",
                "set pytorch.max_tokens_per_batch",
            ],
        ),
    ],
)
def test_each_backend_names_every_rule_an_experiment_breaks(tmp_path, experiment, expected):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model_name": "some/model", "device": "cuda", **experiment}))
    with pytest.raises(ConfigError) as info:
        load_experiment(str(tmp_path / "e.yaml"), [])
    found = info.value.problems
    assert all(any(part in line for line in found) for part in expected), found
    assert len(found) == len(expected), found


# ------------------------------------------------------------------------------------------------ offline validation


def hub_campaign(tmp_path) -> Path:
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "hub",
                "model": "lem-tiny-llama",
                "dataset": "alpaca",
                "num_samples": 10,
                "grid": {"backends": ["pytorch"], "shared": {"device": "cpu"}},
            }
        )
    )
    return tmp_path / "c.yaml"


def test_validate_works_offline_and_says_what_it_could_not_check(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub_campaign(tmp_path)
    code, out, err = cli(capsys, "validate", "c.yaml")  # HF_HUB_OFFLINE=1 in every test
    assert code == 0, err
    assert (
        "warning: key 'dataset.name' = 'alpaca' (tatsu-lab/alpaca, split train) cannot be loaded: offline mode is on "
        "(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and it is not cached (a campaign run checks it again before its first "
        "measurement)"
    ) in out
    assert "Campaign 'hub' is valid: 1 experiments" in out
    # a run needs the prompts: the workflow's check still stops before any job
    from llenergymeasure.prompts import check_sources

    with pytest.raises(ConfigError, match="cannot be loaded: offline mode is on"):
        check_sources(
            [
                plan(resolve_campaign(yaml.safe_load((tmp_path / "c.yaml").read_text()), tmp_path, tmp_path, env={}))
                .expansion.experiments[0]
                .config
            ]
        )
    # what can be checked offline still is: a prompt count the shipped set cannot give, a near miss of a shipped model
    (tmp_path / "d.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "d",
                "model": "lem-tiny-lama",
                "num_samples": 101,
                "grid": {"backends": ["pytorch"]},
            }
        )
    )
    code, out, err = cli(capsys, "validate", "d.yaml")
    assert code == 1 and len(err.splitlines()) == 2
    assert (
        "key 'num_input_prompts' = 101 is out of range; allowed: <= 100" in err
        and "did you mean 'lem-tiny-llama'?" in err
    )


def test_validate_does_not_wait_for_an_unreachable_hub(tmp_path, capsys, monkeypatch):
    """Online mode but no route to the hub: one quick question to the hub, then a warning, not half a minute of
    download retries and a failure."""
    import datasets
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    asked = []

    def unreachable(repo_id, **kwargs):
        asked.append(repo_id)
        raise ConnectionError("Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("validate tried to download a dataset it knows it cannot reach")

    monkeypatch.setattr(huggingface_hub, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", no_download)
    hub_campaign(tmp_path)
    code, out, err = cli(capsys, "validate", "c.yaml")
    assert code == 0, err
    assert asked == ["tatsu-lab/alpaca"]
    assert (
        "warning: key 'dataset.name' = 'alpaca' (tatsu-lab/alpaca, split train) cannot be checked: the Hugging Face hub "
        "cannot be reached (ConnectionError)"
    ) in out


def test_validate_still_refuses_a_dataset_the_hub_does_not_have(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    def missing(repo_id, **kwargs):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as the hub client raises it on a 404
        Exception.__init__(error, f"404 Client Error: Repository Not Found for url: .../api/datasets/{repo_id}")
        raise error

    monkeypatch.setattr(huggingface_hub, "dataset_info", missing)
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "x",
                "model": "lem-tiny-llama",
                "dataset": "someone/no-such-set",
                "grid": {"backends": ["pytorch"], "shared": {"device": "cpu"}},
            }
        )
    )
    code, _out, err = cli(capsys, "validate", "c.yaml")
    assert code == 1 and err.splitlines() == [
        "lem validate: key 'dataset.name' = 'someone/no-such-set' (someone/no-such-set, split train) is not a Hugging Face "
        "dataset (or a private one: set HF_TOKEN)"
    ]


# ------------------------------------------------------------------------------------------------ the commands


def test_lem_validate_takes_an_experiment_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(LEM / "pytorch_v3.yaml", tmp_path / "exp.yaml")
    code, out, err = cli(capsys, "validate", "exp.yaml")
    assert code == 0, err
    assert (
        "\nnote: exp.yaml is an experiment file (no campaign_name): checked as a one-experiment campaign. "
        "To measure it, list it under configs: in a campaign file, or measure it once with lem run exp.yaml\n"
    ) in out
    assert "note: 'dataset.sample_size' is lem v3's name for 'num_input_prompts'" in out
    assert "is valid: 1 experiments" in out and "tiny-pytorch-v3" in out
    (tmp_path / "bad.yaml").write_text("config_name: x\nmodel_name: lem-tiny-llama\nbatch_size: 2\n")
    code, out, err = cli(capsys, "validate", "bad.yaml")
    assert code == 1 and err.splitlines() == [
        "lem validate: bad.yaml: key 'batch_size' = 2: a key of lem before v3, which lem v3 no longer read: a file setting it "
        "measured batch size 1; allowed here: pytorch.batch_size: 2"
    ]
    assert "configs[" not in err and "did you mean 'configs'" not in err


def test_lem_validate_verbose_shows_each_resolved_experiment(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.yaml").write_text(
        "config_name: own\ndataset: {name: builtin, shuffle: true}\nnum_input_prompts: 9\ndevice: cpu\n"
    )
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "v",
                "model": "lem-tiny-llama",
                "dataset": "builtin",
                "num_samples": 4,
                "configs": ["e.yaml"],
                "grid": {
                    "backends": ["pytorch"],
                    "shared": {"device": "cpu"},
                    "backend_overrides": {"pytorch": {"batch_size": [2]}},
                },
            }
        )
    )
    code, out, err = cli(capsys, "validate", "--verbose", "c.yaml")
    assert code == 0, err
    p = plan(resolve_campaign(yaml.safe_load((tmp_path / "c.yaml").read_text()), tmp_path, tmp_path, env={}))
    own, grid = p.expansion.experiments
    assert (
        f"  {own.experiment_id}  own  (configs[e.yaml])\n    model_name: lem-tiny-llama\n    device: cpu\n"
        "    num_input_prompts: 9\n    dataset.shuffle: true\n" in out
    )
    assert f"  {grid.experiment_id}  pytorch-lem-tiny-llama  (grid)\n" in out and "    pytorch.batch_size: 2\n" in out
    assert (
        "note: configs[e.yaml] sets num_input_prompts = 9: the campaign's num_samples = 4 applies only to experiments "
        "that set none"
    ) in out
    assert "sets its own dataset" not in out  # the same dataset name: nothing shadowed
    code, out, _ = cli(capsys, "--json", "validate", "--verbose", "c.yaml")
    data = json.loads(out)
    assert data["experiments"][0]["params"] == own.params and any("num_samples = 4" in n for n in data["notes"])


@pytest.mark.workflow
def test_an_experiment_file_given_as_a_campaign_is_said_to_be_one(workflow_dir):
    shutil.copy(LEM / "pytorch_v3.yaml", workflow_dir / "exp.yaml")
    run = snakemake(workflow_dir, "-n", "--config", "campaign=exp.yaml")
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert run.returncode == 1 and lines == [
        "Configuration error: exp.yaml: this is an experiment file (it has model_name or config_name, and no campaign_name), "
        "not a campaign: list it under configs: in a campaign file (lem validate FILE checks it; lem run FILE measures it once)"
    ], run.stderr


def test_lem_run_dry_run_measures_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(LEM / "pytorch_v3.yaml", tmp_path / "exp.yaml")
    code, out, err = cli(capsys, "run", "exp.yaml", "--dry-run", "--set", "pytorch.batch_size=2")
    assert code == 0, err
    config = load_experiment("exp.yaml", ["pytorch.batch_size=2"])
    from llenergymeasure.campaign import experiment_id

    assert out.splitlines()[0] == f"experiment {experiment_id(config)} (tiny-pytorch-v3)"
    assert (
        "    pytorch.batch_size: 2\n" in out
        and "    timeline.interval_ms: 250\n" in out
        and out.endswith("dry run: nothing measured\n")
    )
    assert "note: exp.yaml: 'timeseries.save' is lem v3's name for 'timeline.save'" in err
    code, out, _ = cli(capsys, "run", "exp.yaml", "--dry-run", "--json")
    assert json.loads(out)["params"] == sparse_config(load_experiment("exp.yaml", []))
    assert not list(tmp_path.rglob("*.json")) and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("argv", "problems"),
    [(["validate", "pre_v3.yaml"], 8), (["run", "pre_v3.yaml", "--dry-run"], 8), (["validate", "lem-config.yaml"], 1)],
)
def test_no_traceback_from_the_commands_given_any_lem_file(argv, problems):
    test_no_traceback_for_any_lem_file_and_every_problem_named(argv, problems)


# ------------------------------------------------------------------------------------------------ --config values


def test_command_line_values_are_read_as_their_keys_types():
    from llenergymeasure.config import coerce_overrides
    from llenergymeasure.legacy import FORMER_SPELLINGS

    # what Snakemake hands over for --config 'execution={cycles: 5, ...}' (YAML's base loader: every scalar a string)
    given = {
        "execution": {
            "cycles": "5",
            "structure": "shuffled",
            "seed": "0",
            "config_gap_s": "2.5",
            "cycle_gap_seconds": "9",
        },
        "notifications": {"on_complete": "false", "webhook_url": "null"},
        "campaign_name": "2024",
        "model": "null",
        "grid": {
            "backends": ["pytorch"],
            "shared": {
                "pytorch.batch_size": ["1", "8"],
                "gpus": ["0", "1"],
                "decoder.preset": "null",
                "fp_precision": "float32",
                "random_seed": "7",
                "dataset.name": "123",
                "baseline.duration_sec": "2",
            },
            "backend_overrides": {"pytorch": {"num_processes": "2"}},
        },
    }
    assert coerce_overrides(given, FORMER_SPELLINGS) == {
        "execution": {"cycles": 5, "structure": "shuffled", "seed": 0, "config_gap_s": 2.5, "cycle_gap_seconds": 9},
        "notifications": {"on_complete": False, "webhook_url": None},
        "campaign_name": "2024",
        "model": None,
        "grid": {
            "backends": ["pytorch"],
            "shared": {
                "pytorch.batch_size": [1, 8],
                "gpus": [0, 1],
                "decoder.preset": None,
                "fp_precision": "float32",
                "random_seed": 7,
                "dataset.name": "123",
                "baseline.duration_sec": 2,
            },
            "backend_overrides": {"pytorch": {"num_processes": 2}},
        },
    }
    # left as given: the schema says why
    assert coerce_overrides({"execution": {"cycles": "many"}}, FORMER_SPELLINGS) == {"execution": {"cycles": "many"}}


@pytest.mark.workflow
def test_the_documented_config_override_works(workflow_dir):
    run = snakemake(workflow_dir, "-n", "--config", "execution={cycles: 5, structure: grouped, seed: 3}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 experiments x 5 cycles, grouped order" in run.stderr
    assert job_counts(run.stdout + run.stderr)["measure"] == 10
    shutil.copy(workflow_dir / "config" / "campaign.yaml", workflow_dir / "mine.yaml")
    run = snakemake(
        workflow_dir, "-n", "--configfile", "mine.yaml", "--config", "execution={cycles: 4}", "num_samples=8"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 experiments x 4 cycles" in run.stderr
    bad = snakemake(workflow_dir, "-n", "--config", "execution={cycles: lots}")
    assert bad.returncode == 1 and "key 'execution.cycles' = 'lots' has the wrong type; allowed: integer" in bad.stderr


@pytest.mark.workflow
def test_a_bad_config_override_is_said_of_config_with_a_hint_that_works(workflow_dir):
    """A --config value is not the campaign file's: its problem names --config, and its "did you mean" is in the
    form --config takes (a nested key as KEY={SUBKEY: VALUE}), which then runs."""
    import re

    for given in ("cycles=4", "execution={cycle: 4}"):
        bad = snakemake(workflow_dir, "-n", "--config", given)
        assert bad.returncode == 1, bad.stderr[-2000:]
        (line,) = [x for x in bad.stderr.splitlines() if x.startswith("Configuration error")]
        assert line.startswith("Configuration error: --config: unknown key") and "campaign.yaml" not in line, line
        (hint,) = re.findall(r"did you mean --config '([^']+)'\?", line)
        assert hint == "execution={cycles: 4}"
        run = snakemake(workflow_dir, "-n", "--config", hint)
        assert run.returncode == 0 and "2 experiments x 4 cycles" in run.stderr, run.stderr[-2000:]
    wrong = snakemake(workflow_dir, "-n", "--config", "execution={cycles: lots}")
    assert "Configuration error: --config: key 'execution.cycles' = 'lots' has the wrong type" in wrong.stderr
    mine = workflow_dir / "mine.yaml"
    mine.write_text((workflow_dir / "config" / "campaign.yaml").read_text().replace("cycles: 3", "cycle: 3"))
    in_file = snakemake(workflow_dir, "-n", "--configfile", "mine.yaml", "--config", "num_samples=8")
    assert "mine.yaml: unknown key 'execution.cycle'" in in_file.stderr and "--config" not in in_file.stderr
