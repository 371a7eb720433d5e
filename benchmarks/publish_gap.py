"""How long a measurement job lives after its raw result is published: the window in which killing the job (kill -9,
the OOM killer, a Slurm time limit, Ctrl-C) makes Snakemake delete a finished measurement. Target: < 100 ms.

    python benchmarks/publish_gap.py                      # this checkout, 3 jobs
    python benchmarks/publish_gap.py --checkout OTHER     # another checkout's measure script and package

Each job is the measure rule's script run as Snakemake runs it (a file holding Snakemake's preamble, which defines
``snakemake``, then the script, started as ``python FILE``), on the embedded tiny model with a completion webhook
that answers after --webhook-delay-s. A watcher polls every millisecond for the raw result to appear; the gap is
from then to the process's exit, as ``wait`` sees it. Printed per job, and the median.
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


class SlowHook(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay_s)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def one_job(checkout: Path, work: Path, model: str, cycle: int, webhook: str) -> tuple[float, float]:
    """(gap from publish to exit, job wall time) in seconds."""
    sys.path.insert(0, str(checkout / "src"))
    from llenergymeasure.campaign import resolve_experiment, sparse_config

    config = resolve_experiment(
        {
            "model_name": "lem-tiny-llama",
            "num_input_prompts": 4,
            "max_output_tokens": 8,
            "warmup": {"enabled": False},
            "baseline": {"enabled": False},
            "energy": {"min_window_s": 0.0},
        }
    )
    raw = work / "raw" / "gap" / f"cycle_{cycle}.json"
    runtime = {
        "results_root": str(work),
        "notifications": {"webhook_url": webhook, "on_complete": True, "on_failure": True},
    }
    preamble = (
        "import types\n"
        f"__file__ = {str(checkout / 'scripts' / 'measure.py')!r}\n"
        "snakemake = types.SimpleNamespace(\n"
        f"    params=types.SimpleNamespace(experiment={sparse_config(config)!r}),\n"
        f"    wildcards=types.SimpleNamespace(experiment='gap', cycle={str(cycle)!r}),\n"
        f"    input={{'model': {model!r}}}, output=types.SimpleNamespace(raw={str(raw)!r}),\n"
        f"    log=[{str(work / f'm{cycle}.log')!r}], config={{'_lem': {runtime!r}}},\n"
        ")\n"
    )
    script = work / f"job_{cycle}.py"
    script.write_text(preamble + (checkout / "scripts" / "measure.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "LLM_ENERGY_VERBOSITY": "quiet"}
    appeared: list[float] = []

    def watch() -> None:
        while not appeared:
            if raw.exists():
                appeared.append(time.monotonic())
            time.sleep(0.001)

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], cwd=work, env=env)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc.wait()
    ended = time.monotonic()
    if not appeared:
        appeared.append(ended)
    if proc.returncode != 0 or not raw.exists():
        raise SystemExit(f"job {cycle} failed (exit {proc.returncode}); see {work / f'm{cycle}.log'}")
    return ended - appeared[0], ended - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", default=str(HERE), help="checkout whose scripts/measure.py and src/ run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--webhook-delay-s", type=float, default=1.0)
    args = ap.parse_args()
    checkout = Path(args.checkout).resolve()
    SlowHook.delay_s = args.webhook_delay_s
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["LLM_ENERGY_CACHE_DIR"] = str(work / "cache")
        sys.path.insert(0, str(checkout / "src"))
        from llenergymeasure.tiny_model import build_tiny_llama

        model = str(work / "model")
        build_tiny_llama(model)
        gaps = []
        for cycle in range(1, args.runs + 1):
            gap, wall = one_job(checkout, work, model, cycle, webhook)
            gaps.append(gap)
            print(f"job {cycle}: published {gap * 1000:.0f} ms before the process ended (job {wall:.1f} s)")
    print(f"{checkout}: median gap from publish to job end {statistics.median(gaps) * 1000:.0f} ms (target < 100 ms)")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
