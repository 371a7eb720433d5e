"""Bad input files get one clear line, quickly, before anything runs: campaign and experiment YAML, prompt files,
model names, results folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from llenergymeasure.campaign import load_campaign, read_yaml, resolve_campaign, resolve_experiment, results_dir
from llenergymeasure.errors import ConfigError
from llenergymeasure.prompts import check_sources, load_prompts, model_problem

CAMPAIGN = "campaign_name: t\nmodel: lem-tiny-llama\ngrid: {backends: [pytorch]}\n"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# ------------------------------------------------------------------------------------------------ campaign YAML


def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "campaign_name: t\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "content, expected",
    [
        (billion_laughs(), r"has more than 100,000 values once its aliases are expanded \(line \d+\)"),
        (
            CAMPAIGN + "model: other\n",
            r"has key 'model' twice in one mapping \(lines 2 and 4\); allowed: each key once",
        ),
        (
            "campaign_name: t\nexecution: {cycles: 2, cycles: 3}\n",
            r"has key 'cycles' twice in one mapping \(lines 2 and 2\)",
        ),
        (
            "campaign_name: t\nnested: " + "[" * 1000 + "]" * 1000 + "\n",
            r"is nested more than 64 levels deep \(line 2\)",
        ),
        (
            "__use_yte__: true\ncampaign_name: ?'t' + 'x'\n",
            r"sets '__use_yte__', which asks Snakemake to evaluate it as a YTE template",
        ),
        ("campaign_name: t\nmodel: [unclosed\n", r"is not valid YAML at line 3"),
    ],
    ids=["alias-bomb", "duplicate-key", "duplicate-key-flow", "deep-nesting", "yte", "syntax"],
)
def test_bad_campaign_yaml_is_one_line_and_quick(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert time.monotonic() - t0 < 5  # an alias bomb used to run for 20-34 s into a MemoryError
    assert f"file '{path}'" in one_line(info)
    assert re.search(expected, str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"campaign_name: t\nmodel: caf\xe9\n", r"is not UTF-8 text \(byte 0xe9 at offset 27\)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", r"is a binary file, not text"),
        (b"x" * (1 << 20) + b"\n", r"is 1.0 MiB; allowed: at most 1 MiB"),
    ],
    ids=["latin-1", "binary", "too-large"],
)
def test_unreadable_campaign_bytes_are_one_line(tmp_path, raw, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert re.search(expected, one_line(info)), str(info.value)


def test_folder_and_missing_campaign_files(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"dir.yaml' is a folder, not a file"):
        load_campaign(tmp_path / "dir.yaml")
    with pytest.raises(ConfigError, match=r"nope.yaml' does not exist"):
        load_campaign(tmp_path / "nope.yaml")


def test_anchors_that_repeat_a_section_are_data(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "campaign_name: t\nmodel: lem-tiny-llama\n"
        "quick: &quick {max_output_tokens: 8, min_output_tokens: 8}\n"
        "grid: {backends: [pytorch], shared: {<<: *quick, max_output_tokens: 16}}\n"
    )
    data = read_yaml(path)
    assert data["grid"]["shared"] == {"max_output_tokens": 16, "min_output_tokens": 8}


def test_experiment_files_get_the_same_checks(tmp_path):
    """A campaign's `configs:` files and `lem run`'s experiment file go through the same reader."""
    from llenergymeasure.run import load_experiment

    (tmp_path / "e.yaml").write_text("model_name: lem-tiny-llama\nmodel_name: other\n")
    (tmp_path / "c.yaml").write_text("campaign_name: t\nconfigs: [e.yaml]\n")
    from llenergymeasure.campaign import expand

    with pytest.raises(ConfigError, match=r"e.yaml' has key 'model_name' twice"):
        expand(load_campaign(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=r"e.yaml' has key 'model_name' twice"):
        load_experiment(str(tmp_path / "e.yaml"), [])


# ------------------------------------------------------------------------------------------------ prompt files


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bin.jsonl", b"\x00\x01\x02binary", r"the file is a binary file, not text"),
        ("latin.txt", "caf\xe9 au lait\n".encode("latin-1"), r"the file is not UTF-8 text \(byte 0xe9 at offset 3\)"),
        ("numbers.jsonl", b"1\n2\n3\n", r"row 1 is a number; allowed: a JSON object with a prompt column"),
        (
            "broken.jsonl",
            b'{"prompt": "a"}\n{"prompt": \n',
            r"line 2 is not valid JSON \(Expecting value at column 12\)",
        ),
        ("folder.txt", None, r"prompt file '.*folder.txt' is a folder, not a file"),
    ],
    ids=["binary", "non-utf8", "jsonl-of-numbers", "truncated-jsonl", "folder"],
)
def test_bad_prompt_files_are_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    base = resolve_experiment({"model_name": "lem-tiny-llama", "dataset": {"name": str(path)}, "num_input_prompts": 1})
    with pytest.raises(ConfigError) as info:
        check_sources([base])
    text = one_line(info)
    assert text.startswith(f"key 'dataset.name' = '{path}'") and re.search(expected, text), text


def test_good_prompt_files_still_load(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\n"a plain string"\n')
    assert load_prompts({"name": str(tmp_path / "p.jsonl")}, 2) == ["café", "a plain string"]
    (tmp_path / "p.txt").write_text("one\r\ntwo\n")
    assert load_prompts({"name": str(tmp_path / "p.txt")}, 2) == ["one", "two"]


# ------------------------------------------------------------------------------------------------ models


def test_a_typo_of_the_embedded_model_is_refused_with_a_suggestion():
    problem = model_problem("lem-tiny-lama")  # offline in tests, so the hub is not asked
    assert "key 'model_name' = 'lem-tiny-lama'" in problem and "did you mean 'lem-tiny-llama'?" in problem
    assert model_problem("lem-tiny-llama") is None


def test_model_folders_are_checked(tmp_path, tiny_model):
    assert model_problem(tiny_model) is None
    assert "folder does not exist" in model_problem(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "the folder has no config.json, so it is not a model folder" in model_problem(str(tmp_path / "empty"))
    (tmp_path / "file.bin").write_bytes(b"x")
    assert "is a file, not a model folder" in model_problem(str(tmp_path / "file.bin"))


def test_hub_ids_offline_need_the_local_cache(tmp_path, monkeypatch):
    """Offline (as in every test), a hub id is accepted only when it is in the Hugging Face cache."""
    import huggingface_hub

    problem = model_problem("some-org/some-model")
    assert "no Hugging Face model of that id is in the local cache while offline mode is on" in problem
    snapshot = tmp_path / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--some-org--some-model" / "refs").mkdir()
    (tmp_path / "models--some-org--some-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_problem("some-org/some-model") is None


def test_no_weights_architecture_typo_suggests_the_shipped_name(tmp_path):
    from llenergymeasure.campaign import expand

    c = resolve_campaign({"campaign_name": "t", "configs": ["e.yaml"]}, tmp_path, tmp_path, env={})
    (tmp_path / "e.yaml").write_text("model_name: llama-3.2-1bb\nno_weights: true\n")
    with pytest.raises(ConfigError, match=r"did you mean 'llama-3.2-1b'\?"):
        expand(c)


def test_validate_checks_models_before_any_job(tmp_path, monkeypatch, capsys):
    from llenergymeasure.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("campaign_name: t\nmodel: lem-tiny-lama\ngrid: {backends: [pytorch]}\n")
    assert main(["validate", "c.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'lem-tiny-llama'?" in err


# ------------------------------------------------------------------------------------------------ results folder


@pytest.mark.parametrize(
    "given, expected",
    [
        ("results/", "results"),
        ("./results", "results"),
        ("./a//b/", "a/b"),
        ("/data//lem/", "/data/lem"),
        ("results", "results"),
    ],
)
def test_results_dir_is_normalised(given, expected):
    assert results_dir(given, "key 'results_dir'") == expected


def test_results_dir_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert results_dir("~/lem", "x") == f"{tmp_path}/lem"


@pytest.mark.parametrize(
    "given, expected",
    [
        (" /data", r"starts or ends with whitespace"),
        ("results/{x}", r"contains '\{' or '\}', which Snakemake reads as wildcards"),
        ("FILE", r"is a file, not a folder"),
        ("FILE/sub", r"lies under '.*FILE', which is a file, not a folder"),
    ],
)
def test_results_dir_that_cannot_be_a_folder_is_refused(tmp_path, given, expected):
    (tmp_path / "FILE").write_text("x")
    given = given.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(ConfigError) as info:
        results_dir(given, "environment variable LLM_ENERGY_RESULTS_DIR")
    assert re.search(expected, one_line(info))


def test_results_dir_from_the_environment_goes_through_the_same_checks(tmp_path):
    raw = {"campaign_name": "t", "model": "lem-tiny-llama", "grid": {"backends": ["pytorch"]}}
    c = resolve_campaign(raw, tmp_path, tmp_path, env={"LLM_ENERGY_RESULTS_DIR": "./out/"})
    assert c["results_dir"] == "out"
    with pytest.raises(ConfigError, match=r"environment variable LLM_ENERGY_RESULTS_DIR = ' out' starts or ends"):
        resolve_campaign(raw, tmp_path, tmp_path, env={"LLM_ENERGY_RESULTS_DIR": " out"})
    c = resolve_campaign({**raw, "results_dir": "res//x/"}, tmp_path, tmp_path, env={})
    assert c["results_dir"] == "res/x"


def test_prompt_and_campaign_errors_keep_existing_results(tmp_path):
    """Nothing is written or removed by a refusal."""
    keep = tmp_path / "results" / "t" / "raw" / "e" / "cycle_1.json"
    keep.parent.mkdir(parents=True)
    keep.write_text(json.dumps({"precious": True}))
    (tmp_path / "c.yaml").write_text(billion_laughs())
    with pytest.raises(ConfigError):
        load_campaign(tmp_path / "c.yaml")
    assert json.loads(keep.read_text()) == {"precious": True}
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "c.yaml",
        os.path.join("results", "t", "raw", "e", "cycle_1.json"),
    ]


def test_the_default_campaign_describes_the_backends_as_they_are():
    """Its comment once said vLLM and TensorRT-LLM were dropped; they run (on CUDA GPUs, in their images)."""
    from conftest import DEFAULT_CAMPAIGN
    from llenergymeasure.backends import BACKENDS as IMPLEMENTED_BACKENDS

    text = DEFAULT_CAMPAIGN.read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("backends:"))
    assert "dropped" not in line and all(b in line for b in IMPLEMENTED_BACKENDS) and "--sdm apptainer" in line


def test_the_tests_default_campaign_is_the_shipped_one():
    """The tests read the default campaign from tests/data/default_campaign.yaml, a copy of config/campaign.yaml as
    committed: the two change together. A config/campaign.yaml edited in the working tree is the user's own
    campaign (the README has them edit it): nothing to compare then."""
    from conftest import DEFAULT_CAMPAIGN, REPO

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)

    try:
        committed = git("show", "HEAD:config/campaign.yaml")
        edited = git("diff", "--quiet", "HEAD", "--", "config/campaign.yaml").returncode != 0
    except OSError:
        pytest.skip("git is not installed: no committed config/campaign.yaml to compare with")
    if committed.returncode != 0:
        pytest.skip("not a git checkout: no committed config/campaign.yaml to compare with")
    if edited:
        pytest.skip("config/campaign.yaml is edited in the working tree: it is the user's campaign now")
    assert committed.stdout == DEFAULT_CAMPAIGN.read_text(), (
        "config/campaign.yaml (committed) and tests/data/default_campaign.yaml differ: copy the shipped default there"
    )


def test_docs_and_messages_use_snakemakes_current_spelling():
    """`--sdm apptainer` everywhere; `--use-singularity` only where it is named as the legacy alias."""
    from conftest import DEFAULT_CAMPAIGN, REPO

    files = [
        REPO / "README.md",
        REPO / "config" / "README.md",
        DEFAULT_CAMPAIGN,
        REPO / "Snakefile",
        *(REPO / "workflow").glob("*.smk"),
        *(REPO / "src" / "llenergymeasure").rglob("*.py"),
        *(REPO / "src" / "llenergymeasure" / "schemas").glob("*.json"),
        *(REPO / "profiles").rglob("*.yaml"),
    ]
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "--use-singularity" in line:
                assert "still works" in line or "legacy" in line, f"{path}: {line}"
    assert "--sdm apptainer" in (REPO / "README.md").read_text()
    from llenergymeasure.backends.vllm import missing_engine

    assert "snakemake --sdm apptainer" in str(missing_engine())


@pytest.mark.parametrize("name", ["small\n", "small\r\n", " small", "small "])
def test_a_campaign_name_with_a_trailing_newline_or_space_is_refused(tmp_path, name):
    """The schema's patterns hold to the end of the value: Python's ``$`` alone also matches before a final
    newline, which would have made ``small\\n`` a results folder name."""
    with pytest.raises(ConfigError, match=r"key 'campaign_name' = .* is not allowed"):
        resolve_campaign(
            {"campaign_name": name, "model": "lem-tiny-llama", "grid": {"backends": ["pytorch"]}},
            tmp_path,
            tmp_path,
            env={},
        )


def test_a_suggestion_never_repeats_the_name_given():
    from llenergymeasure.errors import did_you_mean

    assert did_you_mean("abc", ["abc", "abd"]) == " (did you mean 'abd'?)"
    assert did_you_mean("abc", ["abc"]) == ""
    assert did_you_mean("ABC", ["abc"], ignore_case=True) == " (did you mean 'abc'?)"  # the spelling differs


def test_offline_a_known_model_id_missing_from_the_cache_is_a_warning_not_a_near_miss(tmp_path, monkeypatch, capsys):
    """Offline, whether a real model id exists is something only the network can tell: lem validate warns and
    suggests no other name (the id is a shipped model's own name), but points to no_weights, which measures that
    architecture without the checkpoint; a near miss of one is still refused, with the name it is near."""
    from llenergymeasure.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    (tmp_path / "e.yaml").write_text("model_name: meta-llama/Llama-3.2-1B\n")
    assert main(["validate", "e.yaml"]) == 0
    out = capsys.readouterr()
    warning = [x for x in out.out.splitlines() if x.startswith("warning: ")]
    assert len(warning) == 1 and "meta-llama/Llama-3.2-1B" in warning[0] and "did you mean" not in out.out + out.err
    # its architecture is shipped: the warning points to measuring it without the checkpoint, and following it works
    assert "or, without its checkpoint, no_weights: true measures llama-3.2-1b's architecture" in warning[0]
    (tmp_path / "e.yaml").write_text("model_name: meta-llama/Llama-3.2-1B\nno_weights: true\n")
    assert main(["validate", "e.yaml"]) == 0
    assert "warning: " not in capsys.readouterr().out
    (tmp_path / "e.yaml").write_text("model_name: some-org/some-model\n")  # no shipped architecture: no such hint
    assert main(["validate", "e.yaml"]) == 0
    assert "no_weights" not in capsys.readouterr().out
    (tmp_path / "e.yaml").write_text("model_name: meta-llama/Llama-3.2-1b-x\n")
    assert main(["validate", "e.yaml"]) == 1
    assert "did you mean 'meta-llama/Llama-3.2-1B'?" in capsys.readouterr().err


def test_validate_estimates_past_a_raw_result_that_lacks_keys(tmp_path, monkeypatch, capsys):
    """A raw result without its job time (hand-edited, or truncated to valid JSON) is left out of lem validate's
    estimate: no stack, the campaign is still described."""
    from llenergymeasure.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("campaign_name: t\nmodel: lem-tiny-llama\ngrid: {backends: [pytorch]}\n")
    assert main(["validate", "c.yaml"]) == 0
    (exp,) = re.findall(r"pytorch-lem-tiny-llama-\S+", capsys.readouterr().out)
    raw = tmp_path / "results" / "t" / "raw" / exp
    raw.mkdir(parents=True)
    (raw / "cycle_1.json").write_text(json.dumps({"experiment_id": exp, "cycle": 1}))
    (raw / "cycle_2.json").write_text(json.dumps({"experiment_id": exp, "cycle": 2, "phases_s": None}))
    assert main(["validate", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 measurements to run" in out and "assumed 60 s per job" in out


def test_every_anchored_pattern_of_the_campaign_schema_holds_to_the_end_of_the_value():
    import json
    from pathlib import Path

    from llenergymeasure.config import END_GUARD

    text = (Path(__file__).resolve().parent.parent / "src/llenergymeasure/schemas/campaign.schema.json").read_text()
    patterns = re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', text)
    anchored = [json.loads(p) for p in patterns if json.loads(p).endswith("$")]
    assert anchored and all(p.endswith(END_GUARD) for p in anchored), anchored
