"""One active-learning iteration and the resumable campaign loop.

An iteration: select a batch (recorded with the committee's predictions before anything is
labelled), label it, fine-tune the committee on every label, measure, check the stop rules.
Each step leaves its result in the run directory before the next starts, and each step first looks
for its own result, so a run killed anywhere continues where it stopped: a selected batch is not
re-drawn, a finished label is not recomputed, a saved committee is not retrained.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import __version__, acquisition, measure, metrics
from .arrays import Features, ForceJacobian, feature_moment
from .backbone import Backbone
from .campaign import Campaign
from .committee import Committee, TrainingSet
from .dispatch import make_dispatcher
from .feature_cache import FeatureCache, PoolRows, stream_predict
from .files import atomic_open, file_digest
from .labelers import DONE, FAILED, PENDING, LabelError, LocalLabeler, make_labeler
from .pool import PoolError, drop_close_contacts, generate
from .report_text import one_line
from .store import LABELLED, POOL, SELECTED, RunStore


class WaitingForLabels(RuntimeError):
    """External jobs must finish before the loop can go on."""


@dataclass
class RunResult:
    iterations: int
    n_labels: int
    stop_reason: str | None


def label_key(cid: int) -> str:
    return f"cand{cid:07d}"


class CampaignRun:
    def __init__(self, campaign: Campaign, progress: bool = True):
        self.campaign = campaign
        self.progress = progress
        self.store = RunStore(campaign.run_dir)
        self.run_dir = self.store.run_dir
        digest = file_digest(campaign.model.path)
        known = self.store.get_meta("model_digest")
        if known is not None and known != digest:
            raise ValueError(
                f"{self.run_dir}: this run was started with another base model (digest {known}, now {digest}); "
                "use a new run_dir or restore the model file"
            )
        if known is None:
            self.store.set_meta("model_digest", digest)
            self.store.set_meta("created", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "aloop": __version__,
                                            "python": platform.python_version()})
        self.store.set_meta("campaign", campaign.to_dict())
        self.backbone = Backbone.from_file(campaign.model.path, device=campaign.device, head=campaign.model.head)
        self.labeler = make_labeler(campaign.labeler, self.run_dir / "labels")
        self.dispatcher = make_dispatcher(campaign, self.run_dir, digest)
        self.cache = self.run_dir / "cache"
        self.cache.mkdir(exist_ok=True)
        self.feature_cache = FeatureCache(self.cache / "features", len(self.backbone.theta0))
        if (self.cache / "features.npz").exists():   # a run cached in the earlier single-file format
            self.feature_cache.import_npz(self.cache / "features.npz")
        (self.run_dir / "committee").mkdir(exist_ok=True)

    # --- pool and caches ---------------------------------------------------------------------
    def prepare_pool(self) -> None:
        for spec in self.campaign.pool.sources:
            if self.store.get_meta(f"source:{spec.name}") is not None:
                continue
            frames, forces = generate(spec, self.backbone, self.campaign.seed, self.progress)
            n_generated = len(frames)
            frames, forces = drop_close_contacts(frames, forces, self.campaign.pool.min_distance)
            if len(frames) < n_generated and spec.kind == "neb":
                raise PoolError(f"pool source '{spec.name}': the relaxed path has images with atoms closer than "
                                f"pool.min_distance = {self.campaign.pool.min_distance} Å; check the end points and the base model")
            if len(frames) < n_generated:
                print(f"pool source '{spec.name}': dropped {n_generated - len(frames)} of {n_generated} frames with "
                      f"atoms closer than pool.min_distance = {self.campaign.pool.min_distance} Å")
            self.store.add_candidates(frames, spec.name, forces)
            self.store.set_meta(f"source:{spec.name}", {"n": len(frames), "kind": spec.kind})

    def features(self, ids: list[int]) -> Features:
        """Backbone features of candidates in memory, computed once per candidate and kept in cache/."""
        self.fill_features(ids)
        return self.feature_cache.read(ids)

    def fill_features(self, ids: list[int]) -> None:
        """Compute the features of those of `ids` not cached yet, one block of candidates at a time
        (the dispatcher's `feature_block`: only that block's atoms are in memory)."""
        def compute(chunk):
            return self.dispatcher.features(self.backbone, self.store.atoms(chunk), progress=False)
        missing = self.feature_cache.missing(ids)
        if missing:
            with tqdm(total=len(missing), desc="backbone features", unit="cfg", disable=not self.progress) as bar:
                self.feature_cache.fill(missing, compute, size=self.dispatcher.feature_block, done=bar.update)

    def pool_rows(self, ids: list[int]) -> PoolRows:
        """Features of (possibly very many) candidates as a lazy matrix, streamed from disk."""
        self.fill_features(ids)
        return PoolRows(self.feature_cache, ids)

    def jacobians(self, ids: list[int]):
        folder = self.cache / "jacobians"
        folder.mkdir(exist_ok=True)
        missing = [i for i in ids if not (folder / f"{i}.npz").exists()]
        if missing:
            for cid, jac in zip(missing, self.backbone.force_jacobians(self.store.atoms(missing), progress=self.progress)):
                np.savez(folder / f"{cid}.npz", f0=jac.f0, B=jac.B)
        out = []
        for cid in ids:
            with np.load(folder / f"{cid}.npz") as f:
                out.append(ForceJacobian(f0=f["f0"], B=f["B"]))
        return out

    def new_committee(self) -> Committee:
        ft = self.campaign.finetune
        return Committee(
            self.backbone.theta0, size=self.campaign.committee.size, bootstrap=self.campaign.committee.bootstrap,
            prior_sigma=self.campaign.committee.prior_sigma,
            epochs=ft.epochs, lr=ft.lr, batch_size=ft.batch_size, force_threshold=ft.force_threshold,
            force_weight=ft.force_weight, noise_floor=ft.noise_floor, val_fraction=ft.val_fraction,
            patience=ft.patience, device=self.backbone.device,
        )

    def committee_path(self, iteration: int) -> Path:
        return self.run_dir / "committee" / f"iter_{iteration:03d}.npz"

    def load_committee(self, iteration: int) -> Committee | None:
        path = self.committee_path(iteration)
        return self.new_committee().load(path) if path.exists() else None

    # --- the steps of one iteration ----------------------------------------------------------
    def select(self, iteration: int, committee: Committee | None) -> None:
        available = self.store.ids(state=POOL)
        n_labels = self.store.count(state=LABELLED)
        acquire = self.campaign.acquisition
        size = acquire.initial_size if committee is None else acquire.batch_size_at(iteration)
        size = min(size, self.campaign.stop.max_labels - n_labels, len(available))
        if size <= 0:
            return
        descriptors = self.pool_rows(available)
        rng = np.random.default_rng([self.campaign.seed, iteration, 1])
        if committee is None:
            idx, scores = acquisition.representative(descriptors, size, rng=rng)
            mean, std = np.full(len(idx), np.nan), np.full(len(idx), np.nan)
        else:
            mean_all, std_all = stream_predict(committee, descriptors)
            strategy = acquisition.STRATEGIES[self.campaign.acquisition.strategy]
            idx, scores = strategy(std_all, descriptors, size, rng=rng)
            mean, std = mean_all[idx], std_all[idx]
        chosen = [available[i] for i in idx]
        self.store.mark_selected(chosen, iteration, mean, std, scores)

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
            state = self.labeler.poll(key)
            if state == DONE:
                label = self.labeler.collect(key)
                self.store.add_label(cid, label.energy, label.sigma, {**label.provenance, "labeler": self.labeler.name,
                                                                      "key": key, "iteration": iteration})
            elif state == FAILED:
                try:
                    self.labeler.collect(key)
                except LabelError as err:
                    self.store.mark_failed(cid, str(err))
            else:
                waiting.append(key)
        if waiting:
            where = getattr(self.labeler, "workdir", self.run_dir / "labels")
            raise WaitingForLabels(
                f"{len(waiting)} jobs queued in {where} ({self.labeler.name}); "
                f"run them, then `aloop ingest {self.run_dir}` and `aloop run` again"
            )

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

    def training_set(self, subset: list[int] | None = None) -> tuple[list[int], TrainingSet]:
        """Every label (or those of the candidates in `subset`) in the form the committee fits."""
        ids, energy, sigma = self.store.labels()
        if subset is not None:
            keep = np.isin(ids, subset)
            ids, energy, sigma = [i for i, k in zip(ids, keep) if k], energy[keep], sigma[keep]
        jacobians = self.jacobians(ids)
        f_lf = [self.lf_forces(cid, jac) for cid, jac in zip(ids, jacobians)]
        return ids, TrainingSet.build(self.features(ids), energy, sigma, jacobians, f_lf)

    def train(self, iteration: int) -> Committee:
        _, data = self.training_set()
        if len(data) == 0:
            raise RuntimeError(f"iteration {iteration}: no labelled configuration to train on (all failed?)")
        rng = np.random.default_rng([self.campaign.committee.seed, iteration, 2])
        moment = feature_moment(self.pool_rows(self.store.ids()))
        committee = self.new_committee().fit(data, len(self.backbone.z_table), rng, moment=moment,
                                             progress=self.progress)
        with atomic_open(self.committee_path(iteration)) as handle:
            committee.save(handle)
        return committee

    # --- the loop ----------------------------------------------------------------------------
    def run(self, max_iterations: int | None = None) -> RunResult:
        try:
            return self._run(max_iterations)
        finally:
            self.dispatcher.close()   # Parsl's executors (and their batch jobs) end with the run

    def _run(self, max_iterations: int | None) -> RunResult:
        t0 = time.time()
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
            record = measure.iteration_record(self, iteration, committee, seconds)
            records.append(record)
            reason = metrics.stop_reason(self.campaign, records)
            record["stop"] = reason
            self.store.write_iteration(iteration, record)
            if self.progress:
                print(one_line(record), flush=True)
            iteration += 1
            done_now += 1
            seconds = {}
        self.store.set_meta("stop_reason", reason)
        return RunResult(iteration, self.store.count(state=LABELLED), reason)

    def export(self, out_dir: str | Path | None = None, members: bool = True) -> list[Path]:
        """The committee mean (energies are linear in θ, so it is exactly the mean of the members'
        energies) and each member, as ordinary MACE model files."""
        records = self.store.iterations()
        if not records:
            raise ValueError(f"{self.run_dir}: nothing to export yet; run the campaign first")
        iteration = records[-1]["iteration"]
        committee = self.load_committee(iteration)
        out = Path(out_dir) if out_dir else self.run_dir / "export"
        paths = [self.backbone.export(committee.thetas_.mean(0), out / "committee_mean.model")]
        if members:
            for k, theta in enumerate(committee.thetas_):
                paths.append(self.backbone.export(theta, out / f"member_{k}.model"))
        return paths
