"""One active-learning iteration and the resumable campaign loop.

An iteration: select a batch (recorded with the committee's predictions before anything is
labelled), label it, fine-tune the committee on every label, measure, check the stop rules.
Each step leaves its result in the run directory before the next starts, and each step first looks
for its own result, so a run killed anywhere continues where it stopped: a selected batch is not
re-drawn, a finished label is not recomputed, a saved committee is not retrained.
"""
from __future__ import annotations

import platform
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from . import __version__, acquisition, binding, measure, metrics, multifidelity, provenance, reaction_path, rerank
from .arrays import Features, ForceJacobian, ReadoutInputs, feature_moment
from .backbone import Backbone
from .campaign import Campaign
from .checks import check_campaign, load_backbone
from .committee import Committee, TrainingSet
from .cost import CostModel, label_core_hours
from .dispatch import make_dispatcher
from .domain import DomainGuard
from .delta import DeltaCommittee, DeltaReadout, HiddenTerms, nonlinear_map
from .feature_cache import AtomRowsCache, FeatureCache, PoolRows, stream_predict
from .full_committee import FullCommittee
from .full_readout import FullReadout, GraphPart, LabelledGraph
from .files import atomic_open, file_digest
from .ingest import retry
from .labelers import PENDING, LabelError, LocalLabeler, make_labeler
from .labelers.base import WaitingForLabels
from .labelers.qmcpack import QMCPACKLabeler
from .pool import Geometries, PoolError, generate, read_frames, same_geometry, screen, trajectories
from .rundir import RunDir, candidate_id, label_key
from .store import FAILED, LABELLED, POOL, SELECTED, RunStore
from .report_text import one_line


PATH_POINT_TOLERANCE = 0.02   # Å, largest coordinate difference to an earlier path point


def mean_surface(backbone: Backbone, full, committee) -> tuple[Backbone, np.ndarray | None]:
    """The committee mean's energy surface as (backbone, θ) for a CI-NEB or forces: `backbone` with the
    mean θ, or, with a nonlinear map `full` (`readout: full`, `kind: delta`), the one model of the
    members' average (θ None: its own; FullReadout.model_with), on `backbone`'s device."""
    if full is None:
        return backbone, committee.thetas_.mean(0)
    return Backbone(full.model_with(committee.phis_), device=str(backbone.device)), None


@dataclass
class RunResult:
    iterations: int
    n_labels: int
    stop_reason: str | None


class NoLabels(ValueError):
    """The first batch gave no label; the message says what failed and what to do."""


class CampaignRun:
    def __init__(self, campaign: Campaign, progress: bool = True, accept: tuple[str, ...] = ()):
        """`progress`: show progress bars; the one line per iteration is printed either way."""
        self.campaign = campaign
        self.progress = progress
        # the model loads before the folder is touched: a broken file must not bind (or create) a run
        self.backbone = load_backbone(campaign)
        self.layout = RunDir.create(campaign.run_dir)
        self.store = RunStore(self.layout.root)
        self.run_dir = self.layout.root
        digest = file_digest(campaign.model.path)
        labeler_changed = self.bind(digest, accept)
        if self.store.get_meta("created") is None:
            self.store.set_meta("created", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "aloop": __version__,
                                            "python": platform.python_version()})
        self.store.set_meta("campaign", campaign.to_dict())
        self.store.set_meta("sessions", (self.store.get_meta("sessions") or []) + [provenance.session()])
        self.labeler = make_labeler(campaign.labeler, self.run_dir, campaign.name)
        if labeler_changed:    # the new settings get another chance at what the old ones failed
            retry(self.store, self.labeler)
        self.dispatcher = make_dispatcher(campaign, self.run_dir, digest)
        self.cache = self.layout.cache
        self.cache.mkdir(exist_ok=True)
        self.feature_cache = FeatureCache(self.cache / "features", len(self.backbone.theta0))
        # finetune.readout: full and kind: delta also need, per candidate, the per-atom inputs of the
        # MLP readout
        self.full = nonlinear_map(self.backbone, campaign.finetune)
        self.atom_cache = None if self.full is None else AtomRowsCache(self.cache / "readout_inputs",
                                                                       sum(self.full.widths))
        self.layout.committees.mkdir(exist_ok=True)
        self._guard: DomainGuard | None = None
        self._training: list[Atoms] | None = None

    @classmethod
    def reopen(cls, folder: str | Path, progress: bool = False) -> "CampaignRun":
        """The run in `folder` with the settings it recorded, at that folder rather than the run_dir
        recorded in it (a run folder may have been moved)."""
        store = RunStore.existing(folder)
        settings = {**store.get_meta("campaign"), "run_dir": str(store.run_dir.resolve())}
        return cls(Campaign.model_validate(settings, context={"base_dir": str(store.run_dir)}), progress=progress)

    def bind(self, digest: str, accept) -> bool:
        """Check the campaign against the fields this folder's data was made with (binding.py) and
        record the ones it is bound to now; whether the labeler's settings changed."""
        now = self.fields = binding.of_campaign(self.campaign, digest)
        binding.check_accepted(accept, now)
        bound = self.store.get_meta("binding")
        legacy = self.store.get_meta("model_digest")   # runs made before binding.py knew only the model
        if bound is None:
            bound = {**now, "model": {"sha256": legacy, "head": self.campaign.model.head}} if legacy else {}
        changed = binding.changes(bound, now, self.store.count(state=LABELLED) > 0)
        refused = [f for f in changed if f not in accept]
        if refused:
            raise binding.refusal(self.run_dir, bound, now, refused)
        sources = {s.name: s for s in self.campaign.pool.sources}
        for field in changed:
            name = field.removeprefix(binding.SOURCE)
            if field.startswith(binding.SOURCE) and field in bound and name in sources:
                if sources[name].kind == "neb":
                    raise ValueError(f"--accept-changes {field}: an NEB path is one object and cannot be mixed "
                                     "with another; give the new path another source name")
                self.store.set_meta(f"source:{name}", None)   # read again: its new frames join the pool
        self.store.set_meta("binding", {f: v for f, v in now.items() if not f.startswith(binding.SOURCE)
                                        or self.store.get_meta(f"source:{f.removeprefix(binding.SOURCE)}")})
        return "labeler" in bound and bound["labeler"] != now["labeler"]

    # --- pool and caches ---------------------------------------------------------------------
    def guard(self) -> DomainGuard:
        """The domain guard of the campaign's pool (aloop.domain), from the base model's training data;
        made once a run (the path points of every iteration pass it too)."""
        if self._guard is None:
            c = self.campaign
            self._guard = DomainGuard.from_settings(c.pool.min_distance, c.pool.domain, self.training_frames())
        return self._guard

    def training_frames(self) -> list[Atoms] | None:
        """The base model's training configurations (model.training_data), None without; read once."""
        if self._training is None and self.campaign.model.training_data is not None:
            self._training = read_frames(self.campaign.model.training_data, ":", "model.training_data")
        return self._training

    def prepare_pool(self) -> None:
        """Candidates of every source not in the pool yet. A frame outside the base model's domain
        (aloop.domain) is not added, nor are the later frames of an MD trajectory that left it; a
        frame that repeats one already in the pool (within pool.DUPLICATE_TOLERANCE) is not added
        either: it would buy the same label twice."""
        todo = [spec for spec in self.campaign.pool.sources if self.store.get_meta(f"source:{spec.name}") is None]
        if not todo:
            return
        guard = self.guard()
        seen = Geometries()
        for atoms in self.store.atoms(self.store.ids()):
            seen.add(atoms)
        # a difference observable reads its source's first and last frames: every frame must stay
        differences = {obs.path: obs.name for obs in self.campaign.evaluation.observables if obs.kind == "difference"}
        for spec in todo:
            frames, forces = generate(spec, self.backbone, self.campaign.seed, self.progress)
            whole = spec.kind == "neb" or spec.name in differences
            result = screen(frames, guard, seen, drop_repeats=not whole,
                            trajectory=trajectories(frames) if spec.kind == "md" else None)
            if result.violations and spec.kind == "neb":
                i, worst = next(iter(result.violations.items()))
                raise PoolError(f"pool source '{spec.name}': the relaxed path leaves the base model's domain at image "
                                f"{i} ({worst}); floors: {guard.describe()}; check the end points and the base model")
            if whole and len(result.keep) < len(frames):
                why = "; ".join(f"{reason}: frames {', '.join(map(str, i))}" for reason, i in result.dropped.items() if i)
                raise PoolError(f"pool source '{spec.name}': observable '{differences[spec.name]}' is the difference of "
                                f"its last and first frames, and frames were left out ({why}); floors: "
                                f"{guard.describe()}; fix the file or the base model's domain")
            for why, indices in result.dropped.items():
                if indices:
                    print(f"pool source '{spec.name}': dropped {len(indices)} of {len(frames)} frames: {why} "
                          f"(frames {', '.join(map(str, indices[:10]))}{' …' if len(indices) > 10 else ''})")
            keep = result.keep
            self.store.add_candidates([frames[i] for i in keep], spec.name,
                                      None if forces is None else [forces[i] for i in keep], indices=keep)
            pairs = Counter(violation.pair for violation in result.violations.values())
            self.store.set_meta(f"source:{spec.name}", {"n": len(keep), "kind": spec.kind, "frames": len(frames),
                                                        **{why: len(i) for why, i in result.dropped.items()},
                                                        "pairs": dict(pairs)})
            bound = self.store.get_meta("binding")
            bound[binding.SOURCE + spec.name] = self.fields[binding.SOURCE + spec.name]
            self.store.set_meta("binding", bound)

    def add_path_points(self, iteration: int) -> None:
        """The end points and saddle of each relaxed observable path of `iteration` join the pool as
        candidates of source `path:NAME`, through the same screening as every source: a strategy can
        then label the configurations that decide the barrier. A point within PATH_POINT_TOLERANCE of an
        earlier one (or of a source image) is not added: end points that settle by a few mÅ an
        iteration would otherwise fill the pool with copies that a label would not tell apart."""
        for obs in self.campaign.evaluation.observables:
            relaxed = reaction_path.load(self.layout.path(obs.name, iteration)) if obs.relax else None
            if relaxed is None:
                continue
            source = f"path:{obs.name}"
            earlier = self.store.source_ids(source)
            seen = Geometries(PATH_POINT_TOLERANCE)
            for atoms in self.store.atoms(earlier + self.store.source_ids(obs.path)):
                seen.add(atoms)
            points = reaction_path.key_points(relaxed)
            keep = screen(points, self.guard(), seen).keep
            if keep:
                self.store.add_candidates([points[i] for i in keep], source, added=iteration,
                                          indices=list(range(len(earlier), len(earlier) + len(keep))),
                                          roles=[reaction_path.KEY_POINT_ROLES[i] for i in keep])

    def features(self, ids: list[int]) -> Features:
        """Backbone features of candidates in memory, computed once per candidate and kept in cache/."""
        self.fill_features(ids)
        return self.feature_cache.read(ids)

    def inputs(self, ids: list[int]) -> Features | ReadoutInputs:
        """What the committee predicts from: the features, and with `readout: full` the MLP readout's
        per-atom inputs besides."""
        feats = self.features(ids)
        if self.full is None:
            return feats
        h = self.atom_cache.read(ids)
        return ReadoutInputs(feats, np.split(h, np.cumsum(self.full.widths)[:-1], axis=1))

    def frame_inputs(self, frames) -> Features | ReadoutInputs:
        """`inputs` of configurations that are not candidates (a path's images, a test set)."""
        return self.backbone.features(frames) if self.full is None else self.full.inputs(frames)

    def mean_surface(self, committee) -> tuple[Backbone, np.ndarray | None]:
        return mean_surface(self.backbone, self.full, committee)

    def fill_features(self, ids: list[int]) -> None:
        """Compute the features of those of `ids` not cached yet, one block of candidates at a time
        (the dispatcher's `feature_block`: only that block's atoms are in memory)."""
        if self.full is not None:
            self.fill_inputs(ids)
            return

        def compute(chunk):
            return self.dispatcher.features(self.backbone, self.store.atoms(chunk), progress=False)
        missing = self.feature_cache.missing(ids)
        if missing:
            with tqdm(total=len(missing), desc="backbone features", unit="cfg", disable=not self.progress) as bar:
                self.feature_cache.fill(missing, compute, size=self.dispatcher.feature_block, done=bar.update)

    def fill_inputs(self, ids: list[int]) -> None:
        """`readout: full`: features and MLP inputs of those of `ids` missing either, from one backbone
        pass in this process (the dispatcher's feature shards carry the features alone)."""
        missing = sorted(set(self.feature_cache.missing(ids)) | set(self.atom_cache.missing(ids)))
        size = self.dispatcher.feature_block
        with tqdm(total=len(missing), desc="backbone features and readout inputs", unit="cfg",
                  disable=not self.progress or not missing) as bar:
            for lo in range(0, len(missing), size):
                chunk = missing[lo:lo + size]
                inputs = self.full.inputs(self.store.atoms(chunk))
                self.feature_cache.write(chunk, inputs.features)
                self.atom_cache.write(chunk, inputs.features.n_atoms, np.hstack(inputs.h))
                bar.update(len(chunk))

    def pool_rows(self, ids: list[int]) -> PoolRows:
        """Features of (possibly very many) candidates as a lazy matrix, streamed from disk."""
        self.fill_features(ids)
        if self.full is None:
            return PoolRows(self.feature_cache, ids)
        return PoolRows(self.feature_cache, ids, atoms=self.atom_cache, widths=self.full.widths)

    def prior_moment(self) -> np.ndarray:
        """The per-atom feature second moment of every candidate, labelled or not, which scales the
        committee's prior (Committee.fit): each use between two fits sees the same pool."""
        return feature_moment(self.pool_rows(self.store.ids()))

    def jacobians(self, ids: list[int]):
        folder = self.cache / "jacobians"
        folder.mkdir(exist_ok=True)
        missing = [i for i in ids if not (folder / f"{i}.npz").exists()]
        if missing:
            for cid, jac in zip(missing, self.backbone.force_jacobians(self.store.atoms(missing), progress=self.progress)):
                with atomic_open(folder / f"{cid}.npz") as handle:   # a crash leaves no half-written file
                    np.savez(handle, f0=jac.f0, B=jac.B)
        out = []
        for cid in ids:
            with np.load(folder / f"{cid}.npz") as f:
                out.append(ForceJacobian(f0=f["f0"], B=f["B"]))
        return out

    def new_committee(self) -> Committee | FullCommittee:
        if self.full is not None:
            kind = DeltaCommittee if isinstance(self.full, DeltaReadout) else FullCommittee
            return kind.from_settings(self.full, self.campaign.committee, self.campaign.finetune)
        return Committee.from_settings(self.backbone.theta0, self.campaign.committee, self.campaign.finetune)

    def load_committee(self, iteration: int) -> Committee | FullCommittee | None:
        path = self.layout.committee(iteration)
        return self.new_committee().load(path) if path.exists() else None

    # --- the steps of one iteration ----------------------------------------------------------
    def select(self, iteration: int, committee: Committee | None) -> None:
        acquire = self.campaign.acquisition
        labelled = self.store.ids(state=LABELLED)
        # with repeats, every labelled configuration is also a candidate for another label
        repeatable = labelled if acquire.repeats and committee is not None else []
        available = self.store.ids(state=POOL) + repeatable
        size = acquire.initial_size if committee is None else acquire.batch_size_at(iteration)
        size = min(size, self.campaign.stop.max_labels - len(labelled), len(available))
        if size <= 0:
            return
        descriptors = self.pool_rows(available)
        rng = np.random.default_rng([self.campaign.seed, iteration, 1])
        model = self.cost_model()
        if committee is None:
            idx, scores = acquisition.representative(descriptors, size, rng=rng)
            mean, std = np.full(len(idx), np.nan), np.full(len(idx), np.nan)
        else:
            mean_all, std_all = stream_predict(committee, descriptors)
            extra = self.strategy_inputs(committee, iteration, available, descriptors, model)
            strategy = acquisition.STRATEGIES[acquire.strategy]
            idx, scores = strategy(std_all, descriptors, size, rng=rng, **extra)
            mean, std = mean_all[idx], std_all[idx]
        chosen = [available[i] for i in idx]
        if repeatable:
            again = set(repeatable)
            chosen = [self.store.add_repeat(c, iteration) if c in again else c for c in chosen]
            self.fill_features(chosen)
        self.store.mark_selected(chosen, iteration, mean, std, scores,
                                 core_hours=self.predicted_cost(chosen, model),
                                 relevance=self.relevance(committee, iteration, chosen))

    def relevance(self, committee: Committee | None, iteration: int, ids: list[int]) -> list[dict] | None:
        """Each candidate's {observable: metrics.relevance} under `committee` (the one of iteration − 1,
        which chose them for `iteration`): how far its label will test the spread of each observable
        measured with that committee. None without a committee, a record of it or members enough."""
        records = self.store.iterations()
        if committee is None or not ids or len(records) < iteration or iteration < 1:
            return None
        members = {name: np.asarray(o.get("members", []), dtype=float)
                   for name, o in records[iteration - 1]["observables"].items()}
        members = {name: m for name, m in members.items() if len(m) >= 3 and np.all(np.isfinite(m))}
        if not members:
            return None
        energies = committee.member_energies(self.inputs(ids))
        weights = {name: metrics.relevance(energies, m) for name, m in members.items()}
        return [{name: float(w[j]) for name, w in weights.items()} for j in range(len(ids))]

    def strategy_inputs(self, committee: Committee, iteration: int, available: list[int], descriptors: PoolRows,
                        model: CostModel) -> dict:
        """The keyword inputs of the campaign's strategy besides σ: `targeted`'s posterior, and the
        predicted costs when cost-aware (None while no cost is known: every candidate costs the same)."""
        acquire = self.campaign.acquisition
        extra = self.targeted_inputs(committee, iteration, available) if acquire.strategy == "targeted" else {}
        if acquire.cost_aware:
            extra["cost"] = self.predicted_cost(available, model, descriptors)
        return extra

    def targeted_inputs(self, committee: Committee, iteration: int, available: list[int]) -> dict:
        """What `acquisition.targeted` needs besides σ (`committee`: the one of iteration − 1, which
        selects for `iteration`): the committee's posterior covariance (prior
        scaled on the whole pool, as in `train`), the target observables' directions, the predicted
        noise of a label (σ_floor² + the labels' median σ²) and the candidates' energy rows. With
        `readout: full` all of these are linearised at the members' mean φ̄ (FullCommittee), and the
        rows, ∂E/∂φ, are computed here for every available candidate (P numbers each), streamed
        from the cache a block of candidates at a time. Where the evidence found a model error, the
        configurations the targets read that wait in the pool carry it as parameters of their own
        (`acquisition.with_read_errors`)."""
        ids, data = self.training_set()
        moment = self.prior_moment()
        directions = measure.observable_directions(self, committee, iteration - 1)
        targets = self.campaign.acquisition.targets or list(directions)
        label_sigma = self.labels()[2]
        if self.full is None:
            sigma = committee.posterior_covariance(data, moment)
            rows = PoolRows(self.feature_cache, available, per_atom=False)
        else:
            sigma = committee.posterior_covariance(data, self.graph(ids), len(self.backbone.z_table), moment)
            rows = np.empty((len(available), self.full.n_params))
            for s, inputs in self.pool_rows(available).features():
                rows[s] = committee.energy_rows(inputs)
        inputs = {"sigma": sigma, "directions": np.array([directions[name][0] for name in targets]),
                  "noise": committee.effective_floor**2 + float(np.median(label_sigma**2)), "rows": rows}
        if committee.model_error_ == 0:
            return inputs
        points = [self.read_candidates(name, directions[name][1], available) for name in targets]
        return acquisition.with_read_errors(**inputs, points=points, variance=committee.model_error_**2)

    def read_candidates(self, name: str, reads: list[tuple], available: list[int]) -> list[tuple[float, int]]:
        """(sign, index into `available`) of the configurations observable `name` reads that wait
        in the pool unlabelled: the pool's own image, or the path point of `path:NAME` within
        PATH_POINT_TOLERANCE of a relaxed path's (the one `add_path_points` kept for it). A labelled
        one is left out: its label has measured its model error already."""
        where = {cid: i for i, cid in enumerate(available)}
        waiting = set(self.store.ids(state=POOL))
        points = [cid for cid in self.store.source_ids(f"path:{name}") if cid in waiting]
        points = list(zip(points, self.store.atoms(points)))
        found = []
        for sign, cid, atoms in reads:
            if cid is None:
                cid = next((c for c, other in points if same_geometry(atoms, other, PATH_POINT_TOLERANCE)), None)
            if cid in waiting and cid in where:
                found.append((sign, where[cid]))
        return found

    def cost_model(self) -> CostModel:
        """Predicted label costs: fitted to the finished labels of this labeler whose cost is known
        (an accepted change of labeler leaves labels of another price), else the campaign's
        `acquisition.cost_model` (aloop.cost)."""
        rows = [r for r in self.store.rows(state=LABELLED)
                if r.data.get("provenance", {}).get("labeler") == self.labeler.name]
        atoms = self.store.atoms([r.id for r in rows])
        costs = [label_core_hours(r.data["provenance"]) for r in rows]
        return CostModel.fit(self.campaign.acquisition.cost_model, self.campaign.labeler, atoms, costs)

    def predicted_cost(self, ids: list[int], model: CostModel, rows: PoolRows | None = None) -> np.ndarray | None:
        """Each candidate's predicted core-hours (None: no cost known yet). Atoms are counted from the
        feature cache (`rows`, when given, holds the same ids), so a 100k pool is not read from the
        database for them; electrons from the stored configurations."""
        if model.core_hours is None:
            return None
        if model.per == "configuration":
            size = np.ones(len(ids))
        elif model.per == "atom":
            size = (rows if rows is not None else self.pool_rows(ids)).n_atoms()
        else:
            size = model.sizes(self.store.atoms(ids))
        return model.predict(size)

    def label(self, iteration: int) -> None:
        pending_ids = self.store.ids(state=SELECTED)
        if not pending_ids:
            return
        computes = isinstance(self.labeler, LocalLabeler)
        if computes:
            self.compute_labels(pending_ids)
        waiting = []
        # a labeler that computes showed its progress above; here it only hands over finished records
        bar = tqdm(pending_ids, desc=f"labelling ({self.labeler.name})", unit="cfg",
                   disable=not self.progress or computes)
        for cid, atoms in zip(bar, self.store.atoms(pending_ids)):
            key = label_key(cid)
            self.labeler.submit(key, atoms)
            if self.labeler.poll(key) == PENDING:
                waiting.append(key)
                continue
            try:   # a failed job, and a finished one whose number is not finite, give no label
                label = self.labeler.collect(key)
            except LabelError as err:
                self.store.mark_failed(cid, str(err))
                continue
            self.store.add_label(cid, label.energy, label.sigma, {**label.provenance, "labeler": self.labeler.name,
                                                                  "key": key, "iteration": iteration})
        if waiting:
            where = getattr(self.labeler, "workdir", self.layout.labels)
            note = self.rerank_queue(iteration, waiting) if isinstance(self.labeler, QMCPACKLabeler) else ""
            raise WaitingForLabels(
                f"{len(waiting)} jobs queued in {where} ({self.labeler.name}){note}; "
                f"run them, then `aloop ingest {self.run_dir}` and `aloop run` again"
            )

    def rerank_queue(self, iteration: int, waiting: list[str]) -> str:
        """Score the waiting QMCPACK jobs again with the newest committee (aloop.rerank): list in
        queue/cancel.txt those an older committee chose and a fresh batch would not, and queue the
        fresh batch's best candidates in their place as far as the label budget allows (added to
        `waiting`; a labelled configuration, with `acquisition.repeats`, as another label of it).
        Returns a note for the waiting message."""
        ids = [candidate_id(key) for key in waiting]
        old = {cid: self.store.db.get(id=cid) for cid in ids}
        # the jobs of this iteration were chosen by the newest committee a moment ago
        stale = [old[cid].get("iteration", iteration) < iteration for cid in ids]
        acquire = self.campaign.acquisition
        committee = self.load_committee(iteration - 1) if iteration else None
        if committee is None or acquire.strategy == "random" or not any(stale):   # random: no candidate ranks above another
            rerank.write_cancel(self.labeler.workdir, [], "")
            return ""
        # what select() could choose now, with the waiting jobs last
        repeatable = self.store.ids(state=LABELLED) if acquire.repeats else []
        others = self.store.ids(state=POOL) + repeatable
        available = others + ids
        rows = self.pool_rows(available)
        mean, std = stream_predict(committee, rows)
        model = self.cost_model()
        extra = self.strategy_inputs(committee, iteration, available, rows, model)
        if acquire.strategy == "targeted":   # one pass over the pool serves the batch and the own scores
            extra["products"] = acquisition.posterior_products(extra["sigma"], extra["directions"], extra["rows"])
        batch, _ = acquisition.STRATEGIES[acquire.strategy](
            std, rows, len(ids), rng=np.random.default_rng([self.campaign.seed, iteration, 2]), **extra)
        own = acquisition.own_scores(acquire.strategy, std, **{k: v for k, v in extra.items() if k != "cost"})
        budget = self.campaign.stop.max_labels - self.store.count(state=LABELLED) - len(waiting)
        result = rerank.rerank(own, acquisition.per_cost(own, extra.get("cost")), batch,
                               np.arange(len(others), len(available)), stale, budget)
        index = {key: i for i, key in enumerate(self.labeler.keys())}
        lines = [rerank.CancelLine(waiting[j], self.labeler.workdir / waiting[j], float(old[ids[j]].get("score", 0.0)),
                                   float(result.new_scores[j]), self.labeler.job_id(waiting[j]) or rerank.NO_JOB_ID,
                                   index[waiting[j]]) for j in result.cancellable]
        unit = "eV²" if acquire.strategy == "targeted" else "eV"
        rerank.write_cancel(self.labeler.workdir, lines, (
            f"written by `aloop run` at iteration {iteration}: waiting jobs chosen by an older committee that the "
            f"committee of iteration {iteration - 1} ({acquire.strategy}) would not choose now\n"
            f"cut-off {result.cutoff:.6g} {unit}{' per core-hour' if extra.get('cost') is not None else ''}: the lowest "
            f"value in a fresh batch of {len(ids)} from the {len(available)} candidates it could choose\n"
            "cancel with `scancel <slurm_job_id>`, or `scancel <array job id>_<array_index>` for a job not started; "
            "a result that arrives anyway is still ingested"))
        again = set(repeatable)
        new = [self.store.add_repeat(others[r], iteration) if others[r] in again else others[r]
               for r in result.replacements]
        if new:
            self.fill_features(new)
            self.store.mark_selected(new, iteration, mean[result.replacements], std[result.replacements],
                                     own[result.replacements], core_hours=self.predicted_cost(new, model),
                                     relevance=self.relevance(committee, iteration, new))
            for cid, atoms in zip(new, self.store.atoms(new)):
                self.labeler.submit(label_key(cid), atoms)
                waiting.append(label_key(cid))
        if not lines:
            return ""
        return (f"; {len(lines)} of them cancellable, listed in {self.labeler.workdir / rerank.CANCEL_FILE}"
                + (f" ({len(new)} candidates queued in their place)" if new else ""))

    def compute_labels(self, ids: list[int]) -> None:
        """Run the jobs of a labeler that computes (pyscf, ase, ...) through the dispatcher. Each job's
        record is in labels/ as soon as the job finishes; a job that has a record is not run again."""
        todo = [cid for cid in ids if self.labeler.poll(label_key(cid)) == PENDING]
        jobs = zip([label_key(cid) for cid in todo], self.store.atoms(todo))
        for key, record in self.dispatcher.labels(self.labeler, self.campaign.labeler, jobs, self.progress):
            self.labeler.write_record(key, record)

    def lf_forces(self, cid: int, jac: ForceJacobian) -> np.ndarray:
        """The candidate's low-fidelity forces: stored with the pool, else the base model's."""
        forces = self.store.lf_forces(cid)
        return jac.f0 if forces is None else forces

    def label_noise(self) -> dict:
        """metrics.label_noise of the labels so far: configurations labelled more than once by one
        labeler (acquisition.repeats) against their error bars."""
        rows = self.store.rows(state=LABELLED)
        group = [f"{r.data.get('provenance', {}).get('labeler')}:{self.store.configuration(r)}" for r in rows]
        return metrics.label_noise([r.energy_hf for r in rows], [r.sigma_hf for r in rows], group)

    def labels(self, subset: list[int] | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(ids, energies, error bars) of every label, or of those of the candidates in `subset`; the
        error bars widened by the repeats' scale (`label_noise`), as every fit and test uses them."""
        ids, energy, sigma = self.store.labels()
        sigma = sigma * self.label_noise()["scale"]
        if subset is not None:
            keep = np.isin(ids, subset)
            ids, energy, sigma = [i for i, k in zip(ids, keep) if k], energy[keep], sigma[keep]
        return ids, energy, sigma

    def training_set(self, subset: list[int] | None = None) -> tuple[list[int], TrainingSet]:
        """Every label (or those of the candidates in `subset`) in the form the committee fits."""
        ids, energy, sigma = self.labels(subset)
        jacobians = self.jacobians(ids)
        f_lf = [self.lf_forces(cid, jac) for cid, jac in zip(ids, jacobians)]
        return ids, TrainingSet.build(self.features(ids), energy, sigma, jacobians, f_lf, ids=self.store.draw_ids(ids))

    def no_labels(self, iteration: int) -> str:
        failed = self.store.rows(state=FAILED)
        lines = [f"{self.run_dir}: iteration {iteration} has no label to train on: "
                 f"all {len(failed)} labels of the first batch failed ({self.labeler.name}):"]
        lines += [f"  #{row.id}: {' '.join(str(row.get('reason', 'no reason recorded')).split())[:300]}"
                  for row in failed[:5]]
        lines.append("Fix the campaign's labeler section and run again: a changed labeler retries the failed "
                     f"labels. To retry them with the same settings: aloop requeue {self.run_dir}")
        return "\n".join(lines)

    def hidden_terms(self, ids: list[int], committee: DeltaCommittee) -> list[HiddenTerms]:
        """`kind: delta`: the members' hidden-layer terms of labelled candidates, computed once per
        candidate: the layers are fixed by the committee's seed, size and the correction's width."""
        c = self.campaign
        folder = self.cache / f"delta_s{c.committee.seed}_k{c.committee.size}_h{c.finetune.delta_width}"
        folder.mkdir(exist_ok=True)
        missing = [i for i in ids if not (folder / f"{i}.npz").exists()]
        if missing:
            layers = committee.layers()
            for lo in range(0, len(missing), 16):
                chunk = missing[lo:lo + 16]
                for cid, terms in zip(chunk, self.full.hidden_terms(self.store.atoms(chunk), layers)):
                    with atomic_open(folder / f"{cid}.npz") as handle:
                        terms.save(handle)
        return [HiddenTerms.load(folder / f"{i}.npz") for i in ids]

    def graph(self, ids: list[int], full: FullReadout | None = None) -> LabelledGraph:
        """`readout: full`: the labelled graph of `ids`, each configuration's part computed once and
        kept (it depends on the configuration and the base model only): an iteration pays the
        per-atom Jacobians of its new labels, not of every label again (4.6 s a 47-atom MoS2 cell on
        2 CPU threads). `full`: a FullReadout of this run's base model, for a run of another class
        (a bench refitting its labels with `readout: full`)."""
        full = self.full if full is None else full
        folder = self.cache / "full_graph"
        folder.mkdir(exist_ok=True)
        missing = [i for i in ids if not (folder / f"{i}.npz").exists()]
        for lo in tqdm(range(0, len(missing), 16), desc="per-atom Jacobians of new labels", unit="batch",
                       disable=not self.progress or not missing):
            chunk = missing[lo:lo + 16]
            for cid, part in zip(chunk, LabelledGraph.parts_of(full, self.store.atoms(chunk))):
                with atomic_open(folder / f"{cid}.npz") as handle:
                    part.save(handle)
        return LabelledGraph.from_parts(full, [GraphPart.load(folder / f"{i}.npz") for i in ids])

    def train(self, iteration: int) -> Committee | FullCommittee:
        ids, data = self.training_set()
        if len(data) == 0:
            raise NoLabels(self.no_labels(iteration))
        moment = self.prior_moment()
        committee = self.new_committee()
        if isinstance(committee, DeltaCommittee):
            committee.fit(data, self.hidden_terms(ids, committee), len(self.backbone.z_table), progress=self.progress)
        elif self.full is not None:
            committee.fit(data, self.graph(ids), len(self.backbone.z_table), moment=moment, progress=self.progress)
        else:
            committee.fit(data, len(self.backbone.z_table), moment=moment, progress=self.progress)
        with atomic_open(self.layout.committee(iteration)) as handle:
            committee.save(handle)
        return committee

    def multifidelity(self, iteration: int) -> dict:
        """`kind: multifidelity`: train the model of both fidelities on every label so far and score
        it as the committee is scored (multifidelity.score), each observable's CI-NEB starting from
        this iteration's path of the committee mean."""
        if self.progress:
            print(f"iteration {iteration}: training the multi-fidelity model "
                  f"({self.campaign.finetune.multifidelity.epochs} epochs at most)", flush=True)
        result = multifidelity.run_training(self, iteration)
        return {"model": str(result.path.relative_to(self.run_dir)), "seconds": round(result.seconds, 1),
                "n_labels": result.n_labels, "n_replay": result.n_replay, "force_scale": round(result.force_scale, 5),
                "e0_shift": {str(z): v for z, v in result.e0_shift.items()},
                **multifidelity.score(self, result.path, iteration)}

    # --- the loop ----------------------------------------------------------------------------
    def run(self, max_iterations: int | None = None) -> RunResult:
        try:
            return self._run(max_iterations)
        finally:
            self.dispatcher.close()   # Parsl's executors (and their batch jobs) end with the run

    def _run(self, max_iterations: int | None) -> RunResult:
        t0 = time.time()
        ingested = tuple(s.name for s in self.campaign.pool.sources if self.store.get_meta(f"source:{s.name}") is not None)
        check_campaign(self.campaign, self.backbone, skip=ingested)   # nothing is labelled for a frame the model cannot take
        self.prepare_pool()
        seconds = {"pool": time.time() - t0}
        records = self.store.iterations()
        iteration = len(records)
        reason = metrics.stop_reason(self.campaign, records) if records else None
        done_now = 0
        while reason is None and (max_iterations is None or done_now < max_iterations):
            committee = self.load_committee(iteration)
            if committee is None:
                if self.store.count(iteration=iteration) == 0:
                    t = time.time()
                    self.select(iteration, self.load_committee(iteration - 1) if iteration else None)
                    seconds["select"] = time.time() - t
                    if self.store.count(iteration=iteration) == 0:
                        reason = "pool exhausted: no unlabelled candidate left"
                        break
                t = time.time()
                self.label(iteration)
                seconds["label"] = time.time() - t
                t = time.time()
                committee = self.train(iteration)
                seconds["train"] = time.time() - t
            t = time.time()
            observed = measure.observables(self, committee, iteration)
            seconds["observables"] = time.time() - t
            self.add_path_points(iteration)
            record = measure.iteration_record(self, iteration, committee, seconds, observed)
            records.append(record)
            reason = metrics.stop_reason(self.campaign, records)
            if self.campaign.finetune.kind == "multifidelity" and multifidelity.due(
                    self.campaign.finetune.multifidelity.every, iteration, reason is not None):
                t = time.time()
                record["multifidelity"] = self.multifidelity(iteration)
                record["seconds"]["multifidelity"] = time.time() - t
            record["stop"] = reason
            self.store.write_iteration(iteration, record)
            print(one_line(record), flush=True)   # also without progress bars (--quiet): the run's log
            iteration += 1
            done_now += 1
            seconds = {}
        self.store.set_meta("stop_reason", reason)
        return RunResult(iteration, self.store.count(state=LABELLED), reason)

    def export(self, out_dir: str | Path | None = None, members: bool = True) -> list[Path]:
        """The committee mean and each member, as ordinary MACE model files. The mean is exactly the
        members' average energy: energies are linear in θ, and with `readout: full` or `kind: delta`
        the members' MLP readouts sit side by side in one wider readout (FullReadout.model_with)."""
        records = self.store.iterations()
        if not records:
            raise ValueError(f"{self.run_dir}: nothing to export yet; run the campaign first")
        iteration = records[-1]["iteration"]
        committee = self.load_committee(iteration)
        out = Path(out_dir) if out_dir else self.layout.export
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {out} is a file; give a folder for the model files")
        if self.full is None:
            export, params, mean = self.backbone.export, committee.thetas_, committee.thetas_.mean(0)
        else:   # the whole committee's φ gives its mean model
            export, params, mean = self.full.export, committee.phis_, committee.phis_
        paths = [export(mean, out / "committee_mean.model")]
        if members:
            paths += [export(p, out / f"member_{k}.model") for k, p in enumerate(params)]
        return paths + self.export_multifidelity(records, out)

    def export_multifidelity(self, records: list[dict], out: Path) -> list[Path]:
        """The latest multi-fidelity model (`kind: multifidelity`), as multifidelity.model."""
        latest = [r["multifidelity"] for r in records if r.get("multifidelity")]
        if not latest:
            return []
        out.mkdir(parents=True, exist_ok=True)
        target = out / "multifidelity.model"
        shutil.copyfile(self.run_dir / latest[-1]["model"], target)
        return [target]
