"""Where and how a run was computed: library versions, thread counts, the CPU.

Results that can differ by rounding (features, fits) depend on these, so every session of a run
records them and `aloop status` shows them.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata

PACKAGES = ("aloop", "torch", "mace-torch", "e3nn", "numpy", "scipy", "ase", "pyscf", "pyqmc", "scikit-learn")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_threads() -> dict[str, int]:
    """Threads of each BLAS/OpenMP library loaded in this process, by library."""
    from threadpoolctl import threadpool_info

    return {f"{p['internal_api']}:{p.get('prefix', '')}": p["num_threads"] for p in threadpool_info()}


def session() -> dict:
    # torch as the process has it (the loop has loaded it); looked up, not imported, so that this
    # module stays light for `aloop status`
    torch = sys.modules.get("torch")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES if _version(name) is not None},
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "blas_threads": blas_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }


def describe(sessions: list[dict]) -> list[str]:
    """Lines for `aloop status`: the last session, and whether earlier ones ran differently."""
    if not sessions:
        return []
    last = sessions[-1]
    threads = ", ".join(f"{k.split(':')[0]} {v}" for k, v in last["blas_threads"].items()) or "none loaded"
    versions = ", ".join(f"{k} {v}" for k, v in last["versions"].items())
    lines = [f"computed on: {last['cpu']} ({last['cores']} cores); torch threads {last['torch_threads']}, "
             f"BLAS threads {threads}", f"  versions: python {last['python']}, {versions}"]
    keys = ("versions", "torch_threads", "blas_threads", "cpu")
    differ = [k for k in keys if any(s.get(k) != last.get(k) for s in sessions[:-1])]
    if differ:
        lines.append(f"  {len(sessions)} sessions; earlier ones differed in: {', '.join(differ)} "
                     "(results may differ by rounding; see docs/method.md)")
    return lines
