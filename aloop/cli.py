"""`aloop validate | run | status | ingest | requeue | report | export`: a thin layer over the library.

A user's mistake (bad campaign file, wrong run folder) prints what is wrong and exits 1 without a
traceback; a run waiting for external labels exits 3 with the message saying what to do.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path


def _quiet_imports() -> None:
    # torch/e3nn/mace warn on import about things a user cannot act on
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger().setLevel(logging.ERROR)


def cmd_validate(args) -> int:
    from .campaign import load_campaign

    campaign = load_campaign(args.campaign, run_dir=args.run_dir)
    _threads()
    from .checks import check_campaign, load_backbone

    check_campaign(campaign, load_backbone(campaign))
    print(f"{args.campaign}: valid. run directory: {campaign.run_dir}")
    return 0


def cmd_run(args) -> int:
    from .campaign import load_campaign

    campaign = load_campaign(args.campaign, run_dir=args.run_dir)
    _threads()
    from .loop import CampaignRun
    from .report import write_report

    run = CampaignRun(campaign, progress=not args.quiet, accept=tuple(args.accept_changes))
    result = run.run(max_iterations=args.iterations)
    print(f"{result.iterations} iterations, {result.n_labels} labels. "
          f"{'Stopped: ' + result.stop_reason if result.stop_reason else 'Not stopped yet: run again to continue.'}")
    if result.stop_reason:
        for path in run.export():
            print(f"exported {path}")
    summary = write_report(campaign.run_dir)
    print(f"report: {summary}")
    return 0


def cmd_status(args) -> int:
    folder = Path(_folder(args))
    from .report import status_text

    print(status_text(folder))
    return 0


def cmd_report(args) -> int:
    folder = Path(_folder(args))
    from .report import write_report

    print(f"report: {write_report(folder)}")
    return 0


def cmd_export(args) -> int:
    from .store import RunStore

    folder = _folder(args)
    if not RunStore(folder).iterations():
        raise ValueError(f"{folder}: nothing to export yet: no iteration has finished (`aloop status {folder}` "
                         "says why); run the campaign first")
    _threads()
    from .loop import CampaignRun

    run = CampaignRun.reopen(folder)
    for path in run.export(args.out, members=not args.mean_only):
        print(path)
    return 0


def cmd_ingest(args) -> int:
    from .ingest import ingest, summary

    print(summary(ingest(Path(args.run), args.paths)))
    print(f"`aloop status {args.run}` shows where the run stands; `aloop run CAMPAIGN` continues it")
    return 0


def cmd_requeue(args) -> int:
    from .ingest import requeue

    from .rundir import RunDir
    from .store import RunStore

    keys = requeue(Path(args.run), args.keys)
    print(f"re-queued {len(keys)} job(s): {' '.join(keys) or '(none gave a problem)'}")
    kind = RunStore.existing(args.run).get_meta("campaign")["labeler"]["kind"]
    if keys and kind == "qmcpack":
        print(f"run them ({RunDir(args.run).queue / 'submit.sh'}), then `aloop ingest {args.run}`")
    elif keys:
        print("`aloop run CAMPAIGN` labels them")
    return 0


def _run_folder(p: argparse.ArgumentParser) -> None:
    """The run folder, as RUN or as --run-dir RUN (the spelling `aloop run` takes); `_folder` reads it."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("run", nargs="?", help="the run folder")
    which.add_argument("--run-dir", metavar="RUN", help="the run folder (instead of RUN)")


def _folder(args) -> str:
    """The run folder given, refused (ValueError) before anything heavy is imported when it is no run."""
    from .rundir import RunDir

    folder = args.run or args.run_dir
    RunDir.existing(folder)
    return folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a campaign file and report every problem")
    p.add_argument("campaign")
    p.add_argument("--run-dir", default=None, help="the run folder, instead of the campaign's run_dir")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="run (or resume) a campaign until a stop rule fires")
    p.add_argument("campaign")
    p.add_argument("--iterations", type=int, default=None, help="at most this many iterations now")
    p.add_argument("--run-dir", default=None, help="the run folder, instead of the campaign's run_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars (still one line per iteration)")
    p.add_argument("--accept-changes", action="append", default=[], metavar="FIELD",
                   help="resume although FIELD differs from what the run folder holds (repeat per field)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="where a run stands")
    _run_folder(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("report", help="write plots and a summary into RUN/report")
    _run_folder(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="write the fine-tuned committee as MACE model files")
    _run_folder(p)
    p.add_argument("--out", default=None, help="folder (default RUN/export)")
    p.add_argument("--mean-only", action="store_true", help="only the committee-mean model")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("ingest", help="turn the outputs of queued QMCPACK jobs into labels")
    p.add_argument("run")
    p.add_argument("paths", nargs="*", help="job folders (or folders of them) copied back; default: RUN/queue")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("requeue", help="label again the candidates whose labels failed")
    p.add_argument("run")
    p.add_argument("keys", nargs="*", help="job keys (default: every failed, needs-more-blocks or inconsistent job)")
    p.set_defaults(func=cmd_requeue)
    return parser


def _threads() -> None:
    # Small graphs gain nothing from intra-op threads, and on a busy 2-core machine they make each
    # MACE call up to 15x slower (measured); ALOOP_TORCH_THREADS raises it for large cells. Called by
    # the commands that compute, once the input has been checked: importing torch takes seconds, and
    # a typo in a file name should not wait for it.
    import torch

    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "1")))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_imports()
    from .campaign import CampaignError
    from .labelers.base import WaitingForLabels
    from .pool import PoolError

    try:
        return args.func(args)
    except (CampaignError, PoolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved; run the same command to continue", file=sys.stderr)
        return 130
    except WaitingForLabels as err:
        print(f"waiting: {err}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        from .committee import NotConverged   # here, so that a typo never waits for scipy
        if not isinstance(err, NotConverged):
            raise
        print(f"error: {err}\neverything finished before this fit is saved; after changing the campaign, "
              "run the same command to continue", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
