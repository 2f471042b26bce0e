"""Iteration records as text: the line printed after each iteration and in `aloop status`."""
from __future__ import annotations

from .metrics import MISFIT_CLEAR


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
        saddle = o.get("saddle_labels") or {}
        # a path through geometries the backbone never saw has no value to print (a collapsed MoS2 band read 0.000)
        value = (f"{name}: none, path outside the base model's domain ({o['outside_domain']})" if o.get("outside_domain")
                 else f"{name} {o['mean']:.3f} ± {o['std']:.3f} eV")
        parts.append(value + (f" (its saddles labelled {saddle['mean_error']:+.2f} eV off the model)" if saddle.get("raised") else ""))
    if record.get("tau_backoffs"):
        parts.append(f"τ {record['prior_sigma']:.3g} eV/atom, the evidence's over √2^{record['tau_backoffs']} "
                     "(a member did not converge at it)")
    if (record.get("misfit") or {}).get("raised"):
        parts.append("MISFIT warning (aloop status)")
    if record.get("stop"):
        parts.append(f"STOP: {record['stop']}")
    return "; ".join(parts)


def misfit_warning(record: dict) -> str | None:
    """The warning of a record whose prospective errors need a misfit term (metrics.misfit), or None."""
    m = record.get("misfit") or {}
    if not m.get("raised"):
        return None
    return (f"warning: the prospective errors do not shrink with the committee's σ: a misfit of about "
            f"{m['misfit_rms'] * 1000:.0f} meV that no scale on σ explains (likelihood-ratio test on {m['n']} errors, "
            + (f"p = {m['p_value']:.1g}: raised at an earlier iteration, it stands until p ≥ {MISFIT_CLEAR:g}"
               if m.get("held") else f"p = {m['p_value']:.1g} < {m['alpha']:g}")
            + f"; the σ scale without it has grown to ×{m['scale_without']:.2f}). "
            "The readout likely cannot express the correction: try a wider correction beside the base model "
            "(finetune.kind: delta), a full-readout fine-tune (finetune.readout: full) or a backbone trained on both "
            "fidelities (finetune.kind: multifidelity), or check the labels. The "
            "uncertainty and observable stop rules do not fire while this warning stands; the label budget still does.")


def domain_warning(record: dict) -> str | None:
    """The warning of a record whose relaxed observable path left the base model's domain, or None."""
    left = {name: o["outside_domain"] for name, o in record["observables"].items() if o.get("outside_domain")}
    if not left:
        return None
    where = "; ".join(f"'{name}' at {text}" for name, text in left.items())
    return (f"warning: the committee mean's relaxed path left the base model's domain ({where}): its barrier "
            "is read over geometries the backbone never saw, so it is no answer, and the observable stop rule "
            "does not count it. The next iteration starts its band from the last path that stayed inside; "
            "labels near the collapse are kept out of the pool by the same guard. A fit that drives the band "
            "there usually cannot express the correction.")


def saddle_warning(record: dict) -> str | None:
    """The warning of a record whose observables' own saddles are labelled off their predictions
    (metrics.saddle_bias), or None."""
    off = {name: o["saddle_labels"] for name, o in record["observables"].items()
           if (o.get("saddle_labels") or {}).get("raised")}
    if not off:
        return None
    where = "; ".join(f"'{name}': {b['n']} labels, on average {b['mean_error']:+.3f} eV "
                      f"{'above' if b['mean_error'] > 0 else 'below'} the prediction (z = {b['z']:+.1f}, "
                      f"p = {b['p_value']:.1g})" for name, b in off.items())
    return (f"warning: the labels at the saddles of the committee mean's own relaxed paths sit off what the "
            f"committee predicted for them ({where}). The surface is wrong where the relaxed path crosses, so the "
            "barrier may be off in the same direction (too low where the labels sit above), by up to about as much, "
            "whatever its ± says. That is a bound, not an estimate: a saddle a fraction of an ångström beside the "
            "true one, where the true surface rises across the path, gives the same labels with the barrier right "
            "(docs/campaign.md, `stop`). The observable stop rule does not fire while this stands. A readout that "
            "cannot express the correction near the saddle does this; see the misfit warning, if it stands, for what to try.")


def status_warnings(record: dict) -> list[str]:
    """Every warning `aloop status` and summary.md show for the newest record."""
    return [w for w in (misfit_warning(record), domain_warning(record), saddle_warning(record)) if w]
