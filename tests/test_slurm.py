"""A campaign through Snakemake's Slurm executor on a real single-node Slurm (munged, slurmctld, slurmd).

Needs Debian's slurm-wlm, snakemake-executor-plugin-slurm and root (the daemons run as root, munged as munge);
`.ci/run` installs them. Elsewhere the test is skipped; under CI a missing piece is a failure.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import SMALL
from llenergymeasure.aggregate import read_summary
from llenergymeasure.record.layout import Layout
from llenergymeasure.results import read_result

pytestmark = pytest.mark.workflow

CONF = Path("/etc/slurm/slurm.conf")
GRES = CONF.with_name("gres.conf")
MARK = "# written by the llenergymeasure test suite\n"


def _missing() -> str | None:
    for tool in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (apt-get install slurm-wlm)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm not installed"
    if os.geteuid() != 0:
        return "the Slurm daemons need root"
    for conf in (CONF, GRES):
        if conf.exists() and MARK not in conf.read_text():
            return f"{conf} belongs to a real Slurm installation: not touching it"
    return None


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm test cannot run in CI: {why}")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log"):
        (base / d).mkdir()
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(
        MARK
        + f"""ClusterName=lemtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    # The node declares one GPU, as a GPU node does, so that a job asking for one is scheduled here. Slurm 22.05
    # needs a device file per GPU: a count alone makes slurmd report none (node INVAL), and a plain file is refused
    # as "not a valid character or block device". /dev/null, a character device, is taken as GPU 0: Slurm assigns
    # it to a job as CUDA_VISIBLE_DEVICES=0, as on a one-GPU node, while torch here still sees no CUDA. Finished
    # jobs stay in slurmctld's memory (MinJobAge, seconds) so that `scontrol show job` reads what they asked for
    # after the run.
    GRES.write_text(MARK + "Name=gpu File=/dev/null\n")
    started: list[Path] = []
    munge_pid = Path("/run/munge/munged.pid")
    if not _alive(munge_pid):
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        started.append(munge_pid)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    subprocess.run(["/usr/sbin/slurmctld"], check=True, env=env)
    started.append(base / "slurmctld.pid")
    subprocess.run(["/usr/sbin/slurmd"], check=True, env=env)
    started.append(base / "slurmd.pid")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
            if out.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(
                f"Slurm never became idle: {out.stdout} {out.stderr}\n{(base / 'log' / 'slurmctld.log').read_text()[-2000:]}"
            )
        yield env
    finally:
        for pidfile in reversed(started):  # stop by the PIDs we started, never by name
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except (OSError, ValueError):
                pass
        for conf in (CONF, GRES):
            if conf.exists() and MARK in conf.read_text():
                conf.unlink()


def snakemake_on_slurm(slurm: dict, workflow_dir: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The campaign in ``c.yaml`` through the Slurm profile as shipped and in the form the profile and README give
    (``--config campaign=FILE``), with job sizes for this small machine (the jobs re-run snakemake from the test's
    virtual environment)."""
    env = {**slurm, "PATH": f"{Path(sys.executable).parent}:{slurm['PATH']}"}
    args = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--config", "campaign=c.yaml"]
    args += ["--jobs", "2"]
    args += ["--default-resources", "slurm_partition=debug", "mem_mb=2000", "runtime=30", *extra]
    return subprocess.run(args, cwd=workflow_dir, env=env, capture_output=True, text=True, timeout=timeout)


def test_campaign_through_slurm_matches_a_local_run(slurm, workflow_dir):
    campaign = copy.deepcopy(SMALL)
    campaign["campaign_name"] = "slurm"
    campaign["execution"] = {"cycles": 2, "config_gap_s": 0, "cycle_gap_s": 0}
    (workflow_dir / "c.yaml").write_text(yaml.safe_dump(campaign))
    run = snakemake_on_slurm(slurm, workflow_dir)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "slurm" in (run.stdout + run.stderr).lower()
    root = workflow_dir / "results" / "slurm"
    raws = Layout(root).raw_files()
    assert len(raws) == 4
    for p in raws:
        r = read_result(p, "raw_result")
        assert r["tokens"]["output_tokens"] == 4 * 6
    rows = read_summary(str(root / "summary.csv"))
    assert len(rows) == 2 and all(r["cycles"] == 2 for r in rows)
    assert json.loads((root / "thermal_gaps.json").read_text())["windows"]
    # the same files, in the same shape, as a local run produces
    local = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
    assert {"raw", "aggregated", "summary.csv", "thermal_gaps.json", "notifications", "logs", "benchmarks"} <= local


def test_a_failed_measurement_on_slurm_is_isolated_and_recorded(slurm, workflow_dir, tiny_model):
    """As locally: a broken model folder fails its Slurm job only; what completed is aggregated on the submitting
    host, the failure is recorded, and a rerun would retry exactly it."""
    import re
    import shutil

    broken = workflow_dir / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    campaign = {
        "campaign_name": "slurmfail",
        "model": "lem-tiny-llama",
        "num_samples": 4,
        "grid": {
            "backends": ["pytorch"],
            "models": ["lem-tiny-llama", str(broken)],
            "shared": {
                "fp_precision": "float32",
                "device": "cpu",
                "max_input_tokens": 32,
                "max_output_tokens": 6,
                "min_output_tokens": 6,
                "decoder.preset": "deterministic",
                "baseline.duration_s": 1,
                "warmup.enabled": False,
                "energy.min_window_s": 0,
            },
        },
        "execution": {"cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
    }
    (workflow_dir / "c.yaml").write_text(yaml.safe_dump(campaign))
    run = snakemake_on_slurm(slurm, workflow_dir)
    assert run.returncode == 1, (run.stdout + run.stderr)[-4000:]
    root = workflow_dir / "results" / "slurmfail"
    assert len(Layout(root).raw_files()) == 1
    rows = read_summary(str(root / "summary.csv"))
    assert [r["config_name"] for r in rows] == ["pytorch-lem-tiny-llama"]
    failures = json.loads((root / "failures.json").read_text())["failures"]
    assert [(f["config_name"], f["cycle"]) for f in failures] == [("pytorch-broken-model", 1)]
    assert "SafetensorError" in failures[0]["error"] and (workflow_dir / failures[0]["log"]).exists()
    dry = snakemake_on_slurm(slurm, workflow_dir, "-n", timeout=300)
    scheduled = re.findall(r"wildcards: experiment=([^,\s]+), cycle=(\d+)", dry.stdout + dry.stderr)
    assert scheduled == [(failures[0]["experiment_id"], "1")]


def slurm_jobs(slurm: dict, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Slurm's own record of each job (``scontrol show job -o``), as ``key: value`` fields, by job id."""
    jobs = {}
    for job_id in job_ids:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=slurm)
        assert out.returncode == 0, out.stderr
        jobs[job_id] = dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)
    return jobs


def test_measurement_jobs_ask_slurm_for_their_gpus_unless_on_the_cpu(slurm, workflow_dir):
    """With the default ``device: auto`` a PyTorch experiment runs on CUDA wherever its node has it, so its job
    asks Slurm for the GPU it lists; with ``device: cpu`` it asks for none. Read back from slurmctld, as received.
    On this node (its GPU is no CUDA device) the auto experiment runs on the CPU and its result says so."""
    import re

    campaign = copy.deepcopy(SMALL)
    campaign["campaign_name"] = "slurmgpu"
    campaign["grid"]["shared"]["device"] = ["auto", "cpu"]
    campaign["grid"]["backend_overrides"] = {"pytorch": {"batch_size": 2}}
    campaign["execution"] = {"cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0}
    (workflow_dir / "c.yaml").write_text(yaml.safe_dump(campaign))
    run = snakemake_on_slurm(slurm, workflow_dir)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    jobs = slurm_jobs(slurm, re.findall(r"has been submitted with SLURM jobid (\d+)", out))
    asked = {}  # experiment id -> the GPUs its measurement job asked for, in Slurm's words (None: no request)
    for job in jobs.values():
        found = re.fullmatch(r"rule_measure_wildcards_(.+)_1", job["Comment"])
        if found:
            asked[found.group(1)] = job.get("TresPerJob")
    root = workflow_dir / "results" / "slurmgpu"
    devices = {}
    for p in Layout(root).raw_files():
        r = read_result(p, "raw_result")
        devices[r["config"]["device"]] = (r["experiment_id"], r["model"]["device"])
    (auto_id, auto_ran_on), (cpu_id, cpu_ran_on) = devices["auto"], devices["cpu"]
    assert asked == {auto_id: "gres:gpu:1", cpu_id: None}, (asked, devices)
    assert auto_ran_on == cpu_ran_on == "cpu"  # torch sees no CUDA here: auto fell back, and the result says so
    log = Path(Layout(root).measure_log(auto_id, 1)).read_text()
    assert "GPUs: assigned by Slurm: CUDA_VISIBLE_DEVICES=0" in log
