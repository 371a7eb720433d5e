"""PyTorch data parallelism: ``pytorch.num_processes`` copies of the model, each generating its own shard of the
prompts (never the whole list), one GPU each on CUDA (or a share of the CPU cores).

Process 0 is the measurement job itself; processes 1..N-1 are started with ``python -m`` (not multiprocessing, whose
spawn would re-run the job's script) and join a process group set up by Accelerate's ``PartialState`` from the
usual RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT variables. Control messages go through a gloo group: process 0
broadcasts a command (plan, warm-up, run, stop), every process does its part, process 0 gathers the parts. All
processes start generating after one barrier, so the energy window (opened by process 0 before it broadcasts "run"
and closed after it has gathered every part) covers every process's work; energy is read once per physical GPU for
that window by process 0's meters, never per process. Times are ``time.perf_counter`` values, which on Linux come
from one system-wide monotonic clock, so every process's batch times sit on process 0's window axis.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

from .base import Backend, Batch, ProcessShare, RequestTiming, RunOutput, warmup_off
from .pytorch import PyTorchBackend

log = logging.getLogger(__name__)
CONTROL_TIMEOUT_S = 1800.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Member:
    """What every process (0 included) does with its own model copy and shard."""

    def __init__(self, config: dict, model_path: str) -> None:
        import torch
        import torch.distributed as dist
        from accelerate import PartialState

        self.state = PartialState(cpu=config["device"] == "cpu")
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.control = dist.new_group(backend="gloo", timeout=_timeout())
        if config["device"] == "cpu" or not torch.cuda.is_available():
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))  # share the cores, no oversubscription
        else:
            torch.cuda.set_device(self.state.local_process_index)  # "cuda" now means this process's GPU
        self.local = PyTorchBackend(config, model_path)
        self.prompts: list[str] = []
        self.indices: list[int] = []
        self.batches: list[Batch] = []

    def broadcast(self, message=None):
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, part):
        import torch.distributed as dist

        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(part, parts, dst=0, group=self.control)
        return parts

    def do(self, command: str, payload):
        if command == "load":
            info = self.local.load()
            info["process_index"] = self.rank
            return info
        if command == "plan":
            with self.state.split_between_processes(list(range(len(payload)))) as mine:
                self.indices = list(mine)
            self.prompts = [payload[i] for i in self.indices]
            self.batches = self.local.plan(self.prompts) if self.prompts else []
            return [[self.indices[i] for i in b.indices] for b in self.batches], [b.prompt_tokens for b in self.batches]
        if command == "warmup":
            if not self.batches:
                return warmup_off()
            return self.local.warmup(self.prompts, self.batches, payload)
        if command == "run":
            import torch.distributed as dist

            dist.barrier(group=self.control)  # every process starts generating together
            if not self.batches:
                return RunOutput([], [], 0.0)
            out = self.local.run(self.prompts, self.batches, payload)
            for r in out.requests:
                r.index, r.process_index = self.indices[r.index], self.rank
            for b in out.batches:
                b.process_index = self.rank
            return out
        if command == "reset_peak_memory":
            self.local.reset_peak_memory()
            return None
        if command == "peak_memory":
            return self.local.peak_memory()
        raise ValueError(f"unknown command {command!r}")


def _timeout():
    import datetime

    return datetime.timedelta(seconds=CONTROL_TIMEOUT_S)


class DataParallelPyTorch(Backend):
    """The backend contract over N processes (see backends/base.py); process 0 lives in this object."""

    name = "pytorch"
    token_counting = PyTorchBackend.token_counting
    version_modules = PyTorchBackend.version_modules

    def __init__(self, config: dict, model_path: str) -> None:
        super().__init__(config, model_path)
        self.n = config["pytorch"]["num_processes"]
        self.workers: list[subprocess.Popen] = []
        self.member: _Member | None = None
        self._config_file = None
        self._load: list[dict] = []

    def resolve_device(self) -> str:
        return PyTorchBackend(self.config, self.model_path).resolve_device()

    def gpu_count(self) -> int:
        return self.n if self.resolve_device() == "cuda" else 0

    def model_config(self):
        return self.member.local.model_config()

    # --------------------------------------------------------------------------------------------- processes
    def _start(self) -> None:
        import llenergymeasure

        port = _free_port()
        config = dict(self.config)
        if config["device"] == "auto":
            config["device"] = self.resolve_device()
        fd, self._config_file = tempfile.mkstemp(prefix="lem-dp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump({"config": config, "model_path": self.model_path}, fh)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(llenergymeasure.__file__)))
        base = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(self.n),
            # the processes import what this one imports, in the same order: inside an image, Snakemake appends the
            # host's search paths to a job's sys.path, and Accelerate may come from there
            "PYTHONPATH": os.pathsep.join(
                dict.fromkeys([package_root, *(p for p in sys.path if p and os.path.isdir(p))])
            ),
        }
        if config["device"] == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # a share of the cores each
            base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n))
        for rank in range(1, self.n):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(self.n)}
            self.workers.append(subprocess.Popen([sys.executable, "-m", __name__, self._config_file], env=env))
        os.environ.update(
            {k: base[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "OMP_NUM_THREADS") if k in base}
        )
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(self.n)})
        self.member = _Member(config, self.model_path)

    def _all(self, command: str, payload=None) -> list:
        """Broadcast a command, do process 0's part, gather every part (index = process)."""
        for w in self.workers:
            if w.poll() is not None:
                from ..errors import MeasurementError

                raise MeasurementError(f"data-parallel process exited early (code {w.returncode})")
        self.member.broadcast((command, payload))
        return self.member.gather(self.member.do(command, payload))

    # --------------------------------------------------------------------------------------------- contract
    def load(self) -> dict:
        t0 = time.perf_counter()
        self._start()
        self._load = self._all("load")
        first = self._load[0]
        self.device = first["device"]
        return {
            **first,
            "load_s": time.perf_counter() - t0,
            "model_size_bytes": sum(x["model_size_bytes"] for x in self._load),  # one copy per process
            "data_parallel": {
                "num_processes": self.n,
                "launcher": "python -m + accelerate.PartialState",
                "per_process": [{k: x[k] for k in ("process_index", "device", "load_s")} for x in self._load],
            },
        }

    def plan(self, prompts: list[str]) -> list[Batch]:
        parts = self._all("plan", prompts)
        return [Batch(idx, toks) for part in parts for idx, toks in zip(*part, strict=True)]

    def warmup(self, prompts: list[str], batches: list[Batch], cfg: dict) -> dict:
        """Every process warms up on its own shard's batches (its shapes are the ones it will run)."""
        parts = self._all("warmup", cfg)
        return {
            **parts[0],
            "per_process": [
                {k: p.get(k) for k in ("converged", "final_cv", "iterations_completed", "shapes")} for p in parts
            ],
        }

    def reset_peak_memory(self) -> None:
        self._all("reset_peak_memory")

    def peak_memory(self) -> dict:
        parts = self._all("peak_memory")
        out = {}
        for key in ("cuda_peak_allocated_bytes", "cuda_peak_reserved_bytes"):
            values = [p[key] for p in parts]
            out[key] = None if any(v is None for v in values) else max(values)  # one process per GPU: the largest
        return out

    def run(self, prompts: list[str], batches: list[Batch], seed: int | None, progress=None) -> RunOutput:
        parts = self._all("run", seed)
        requests: list[RequestTiming] = sorted((r for p in parts for r in p.requests), key=lambda r: r.index)
        out_batches = [b for p in parts for b in p.batches]
        if progress is not None:
            progress(len(requests), len(prompts))
        processes = [
            ProcessShare(
                process_index=i,
                num_requests=len(p.requests),
                input_tokens=sum(r.input_tokens for r in p.requests),
                output_tokens=sum(r.output_tokens for r in p.requests),
                num_batches=len(p.batches),
                generate_s=p.generate_s,
                device=self._load[i]["device"],
                start_t=min((b.start_t for b in p.batches), default=None),
                end_t=max((b.end_t for b in p.batches), default=None),
            )
            for i, p in enumerate(parts)
        ]
        steps = [s for p in parts for s in p.steps]
        return RunOutput(requests, out_batches, max(p.generate_s for p in parts), processes=processes, steps=steps)

    def validity_flags(self, run_batches: list[dict]) -> list[tuple[str, str]]:
        flags = self.member.local.validity_flags(run_batches)
        counts = [sum(1 for b in run_batches if b.process_index == i) for i in range(self.n)]
        if min(counts) == 0:
            flags.append(
                ("idle_process", f"{counts.count(0)} of {self.n} processes got no prompt: fewer prompts than processes")
            )
        return flags

    def close(self) -> None:
        if self.member is not None:
            try:
                self.member.broadcast(("stop", None))
            except Exception:
                log.debug("stop broadcast failed", exc_info=True)
        for w in self.workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        self.workers = []
        if self.member is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.member = None
        if self._config_file:
            os.unlink(self._config_file)
            self._config_file = None


def _worker(config_file: str) -> int:
    """Process 1..N-1: follow process 0's commands until "stop"."""
    from ..process import die_with_parent

    die_with_parent()
    with open(config_file) as fh:
        spec = json.load(fh)
    member = _Member(spec["config"], spec["model_path"])
    while True:
        command, payload = member.broadcast()
        if command == "stop":
            break
        member.gather(member.do(command, payload))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
