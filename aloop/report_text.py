"""Iteration records as text: the line printed after each iteration and in `aloop status`."""
from __future__ import annotations


def one_line(record: dict) -> str:
    parts = [f"iteration {record['iteration']}: {record['n_labels']} labels"]
    if record["prospective"]:
        p = record["prospective"]
        parts.append(f"batch error {p['rmse'] * 1000:.1f} meV (σ {p.get('mean_sigma', float('nan')) * 1000:.1f})")
    if record["test"]:
        parts.append(f"test RMSE {record['test']['rmse'] * 1000:.1f} meV")
    if record["pool_sigma"]:
        parts.append(f"pool σ95 {record['pool_sigma']['p95'] * 1000:.1f} meV")
    for name, o in record["observables"].items():
        parts.append(f"{name} {o['mean']:.3f} ± {o['std']:.3f} eV")
    if record.get("stop"):
        parts.append(f"STOP: {record['stop']}")
    return "; ".join(parts)
