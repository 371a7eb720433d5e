"""Fake of ``tensorrt_llm.llmapi.mpi_session.MpiPoolSession`` at 1.0.0: how the release starts its MPI workers.

The release starts them with ``mpi4py.futures.MPIPoolExecutor(max_workers=n, path=sys.path)``. Before a worker
runs anything, mpi4py re-runs the parent's main module in it (mpi4py/futures/_core.py, ``_sync_get_data`` and
``import_main``, mpi4py 4.0.3 lines 869-926): ``runpy.run_module(__main__.__spec__.name)`` when the parent was
started with ``-m``, else ``runpy.run_path(__main__.__file__)`` with ``sys.path[0]`` set to that file's folder,
in both cases with ``run_name='__worker__'``. A main script that does its work at import time (no
``if __name__ == "__main__":`` guard) therefore runs again in the worker, and if it fails there the MPI job aborts.

The fake does exactly that re-run in a child process (no MPI), and raises if it fails; the engine's work itself
then runs in the calling process. Every start is appended to ``STARTS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

STARTS: list[dict] = []

_WORKER = """
import json, os, runpy, sys
name, path, parent_path = sys.argv[1] or None, sys.argv[2] or None, json.loads(sys.argv[3])
sys.path.extend(p for p in parent_path if p not in sys.path)
if name:
    runpy.run_module(name, run_name="__worker__", alter_sys=True)
elif path:
    sys.path[0] = os.path.realpath(os.path.dirname(path))
    runpy.run_path(path, run_name="__worker__")
"""


class MpiPoolSession:
    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self._start_mpi_pool()

    def _start_mpi_pool(self) -> None:
        main = sys.modules["__main__"]
        name = getattr(getattr(main, "__spec__", None), "name", None)
        path = getattr(main, "__file__", None)
        STARTS.append({"n_workers": self.n_workers, "main_name": name, "main_path": path})
        run = subprocess.run(
            [sys.executable, "-c", _WORKER, name or "", path or "", json.dumps(sys.path)],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(
                f"MPI worker aborted while mpi4py re-ran the main module ({name or path}) with run_name '__worker__':\n"
                + run.stderr[-3000:]
            )

    def shutdown(self) -> None:
        pass
