"""A sweep's Optuna study: kept in DIR/study.journal (Optuna's JournalFileBackend), so the same
command continues it; the seeded TPE sampler, the pruner, the enqueued trials."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from experiments.objectives import checkpoints

if TYPE_CHECKING:
    from experiments.sweep_setup import Sweep

STUDY_FILE, STUDY_NAME = "study.journal", "sweep"


def storage(out: Path):
    import optuna

    backend = optuna.storages.journal.JournalFileBackend(str(out / STUDY_FILE))
    return optuna.storages.JournalStorage(backend)


def load_study(out: Path, sampler=None, pruner=None):
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=storage(out), sampler=sampler, pruner=pruner)


def shown() -> tuple:
    """The trial states the outputs list (enqueued trials not yet started are only counted)."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def make_pruner(sw: Sweep):
    import optuna

    if sw.args.pruner == "none":
        return optuna.pruners.NopPruner()
    if sw.args.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=checkpoints(sw.args.total_timesteps, sw.args.prune_points)[0])
    return optuna.pruners.MedianPruner(n_startup_trials=sw.args.prune_startup, n_warmup_steps=0)


def open_study(sw: Sweep):
    """Create the study (first run) or load it; the sampler is seeded with --sampler-seed and the
    number of trials already there, so a continued study does not redraw the first session's
    random start-up points."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sw.out.mkdir(parents=True, exist_ok=True)
    if not (sw.out / STUDY_FILE).exists():
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage(sw.out), direction=sw.direction)
        study.set_user_attr("definition", sw.definition)
    n = len(load_study(sw.out).trials)
    sampler = optuna.samplers.TPESampler(seed=sw.args.sampler_seed * 100_003 + n, constant_liar=True,
                                         n_startup_trials=max(2, min(10, sw.args.trials // 3)))
    study = load_study(sw.out, sampler, make_pruner(sw))
    study.set_user_attr("command", sw.command)
    for params in sw.enqueued:
        study.enqueue_trial(params, skip_if_exists=True)
    return study
