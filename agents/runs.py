"""Run directories: creating one without overwriting anything, and opening one to resume safely.

A run directory holds config.json (the resolved Args, written at start), TensorBoard events,
checkpoint.pt (agents.checkpoint, written atomically) and, once the run has finished, result.json.
Resuming checks that the directory is what it claims to be before anything is built or written:
config.json and the checkpoint's stored arguments agree, the weights fit those arguments, a
finished run is left as it was, and only the flags that do not define the run may be given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agents.checkpoint as ckpt_io
from agents.config import RUNTIME_FIELDS, Args, UsageError, flag

# Stored settings that may differ between config.json and the checkpoint's arguments: how the run
# was last launched (threads, progress bar, checkpoint interval, the resume path) and the total,
# which an extension raises in config.json before the next checkpoint stores it.
_NOT_DEFINING = {*RUNTIME_FIELDS, "resume", "total_timesteps"}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create(run_dir: Path, args: Args) -> None:
    """Make a new run directory with its config.json; an existing one is never reused."""
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise UsageError(f"run directory {run_dir} already exists; pick another --run-name or --resume it") from None
    except OSError as e:
        raise UsageError(f"cannot create run directory {run_dir} ({e.strerror}); choose a writable --runs-dir") from None
    write_json(run_dir / "config.json", dataclasses.asdict(args))


@dataclass
class Resume:
    args: Args  # the run's stored config, with this launch's runtime flags (and an extended total)
    ckpt: dict
    run_dir: Path
    finished: bool  # result.json exists
    extended_from: int | None  # the stored total, when --total-timesteps raises it


def open_resume(args: Args, given: set[str]) -> Resume:
    """Check a run directory for --resume and return its config and checkpoint (UsageError on any
    problem, nothing changed)."""
    run_dir = Path(args.resume)
    try:
        ckpt = ckpt_io.load(run_dir / "checkpoint.pt")
    except ckpt_io.CheckpointError as e:
        raise UsageError(str(e)) from None
    defining = sorted(given - _NOT_DEFINING)
    if defining:
        raise UsageError(
            f"{flag(defining[0])} cannot be given with --resume: a resumed run keeps its own settings "
            f"(only --total-timesteps, to extend it, and {', '.join(map(flag, RUNTIME_FIELDS))} may be given)"
        )
    stored = {"head_size": 0, **ckpt["args"]}  # checkpoints from before --head-size had linear heads
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{run_dir} has no readable config.json; the run directory is incomplete") from None
    as_json = json.loads(json.dumps(stored))  # tuples become lists, as in config.json
    differ = sorted(k for k in set(config) & set(ckpt["args"]) if k not in _NOT_DEFINING and config[k] != as_json[k])
    if differ:
        k = differ[0]
        raise UsageError(
            f"{run_dir}: config.json says {k}={config[k]!r} but the checkpoint was trained with {k}={as_json[k]!r} "
            f"({len(differ)} setting(s) differ: {', '.join(differ)}); restore config.json, the checkpoint is the run"
        )
    runtime = {k: getattr(args, k) for k in RUNTIME_FIELDS}
    total, extended_from = stored["total_timesteps"], None
    if "total_timesteps" in given and args.total_timesteps != total:
        if args.total_timesteps < total:
            raise UsageError(
                f"--total-timesteps {args.total_timesteps} is below the run's {total}; with --resume it may only "
                f"extend the run (give a larger value, or leave it out)"
            )
        total, extended_from = args.total_timesteps, total
    try:
        resolved = Args(**{**stored, **runtime, "resume": str(run_dir), "total_timesteps": total})
    except TypeError as e:
        raise UsageError(f"checkpoint {run_dir / 'checkpoint.pt'} holds arguments this memrl does not know ({e})") from None
    return Resume(resolved, ckpt, run_dir, (run_dir / "result.json").exists(), extended_from)


def restore_weights(agent, optimizer, ckpt: dict, run_dir: Path) -> None:
    """Load the checkpoint's weights and optimizer state; weights that do not fit the arguments
    stored with them are bad input, named as such."""
    try:
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()
        detail = " ".join(first[:2])[:300] if first else type(e).__name__
        raise UsageError(
            f"checkpoint {run_dir / 'checkpoint.pt'}: its weights do not fit the arguments stored with it "
            f"(backbone {ckpt['args'].get('backbone')!r}, hidden size {ckpt['args'].get('hidden_size')}): {detail}"
        ) from None


def start_extension(res: Resume) -> None:
    """An extended run records its new total in config.json; a finished run's result.json is kept
    as result_<steps>.json (a new result.json is written when the extension finishes)."""
    write_json(res.run_dir / "config.json", {**json.loads((res.run_dir / "config.json").read_text()),
                                            "total_timesteps": res.args.total_timesteps})
    if res.finished:
        (res.run_dir / "result.json").rename(res.run_dir / f"result_{res.ckpt['global_step']}.json")


def clean_partial_writes(run_dir: Path) -> list[Path]:
    """Remove temp files a kill left mid-write (checkpoint.pt.*.tmp and the like)."""
    stale = sorted(run_dir.glob("*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
