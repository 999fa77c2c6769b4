"""Train one PPO agent with a memory backbone.

    python train.py                                   # lstm on a small NoisyRecall (about a minute)
    python train.py --env-id MiniGrid-MemoryS9-v0 --backbone gru --seed 2
    python train.py --env-id memrl/NoisyRecall-v0 --backbone mlstm --seq-len 64
    python train.py --backbone mru --memory-options kind=ldu num_heads=4
    python train.py --resume runs/MiniGrid-MemoryS7-v0__lstm__1__1700000000

Writes runs/<env>__<backbone>__<seed>__<time>/: TensorBoard events (CleanRL's tags), config.json,
checkpoint.pt (atomic, every --checkpoint-every updates, at the end and on SIGINT/SIGTERM) and
result.json when the run finishes. ``train()`` reads top to bottom in the order it runs, as
CleanRL's scripts do; the flags and their checks live in agents/config.py, presets in
agents/presets.py, the builders in agents/build.py and agents/collectors.py.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# Re-exported: train.Args and friends are the public names.
from agents.build import make_agent, make_env, make_normalizer, make_optimizer, resolve_device, tune_malloc  # noqa: F401
from agents.collectors import make_collector
from agents.encoders import resolve_encoder
from agents.rollout import normalizer_state
from agents.config import Args, UsageError, given_fields, run_dir_name, validate
from agents.presets import apply_preset


@dataclass
class Outcome:
    run_dir: Path
    stopped_by: int | None = None  # the signal that stopped the run early (checkpointed), if any


def train(args: Args, on_update: Callable[[int], bool] | None = None, given: set[str] | None = None) -> Path:
    """Train (or resume) one run; returns its directory. See ``run``."""
    return run(args, on_update, given).run_dir


def run(args: Args, on_update: Callable[[int], bool] | None = None, given: set[str] | None = None) -> Outcome:
    """Train (or resume) one run. ``on_update(update)`` is called after each update and may return
    True to stop as a signal would (tests use it). ``given``: the flags the command line set (for
    --resume, which refuses run-defining ones); default: those that differ from their defaults."""
    from torch.utils.tensorboard import SummaryWriter

    import agents.checkpoint as ckpt_io
    import agents.runs as runs
    import envs
    from agents.ppo import NonFiniteError, ppo_update
    from agents.progress import Progress

    # 1. Config: a fresh run (flags over the env's preset), or the stored config of the run being
    # resumed (checked first).
    given = given_fields(args) if given is None else given
    res = None
    if args.resume is None:
        args = apply_preset(args, given)
    else:
        res = runs.open_resume(args, given)
        args, run_dir = res.args, res.run_dir
        if res.finished and res.extended_from is None:
            print(f"{run_dir} has finished ({res.ckpt['global_step']:,} steps, result.json); nothing to do. "
                  f"To train it further: --resume {run_dir} --total-timesteps N (N > {args.total_timesteps:,})", file=sys.stderr)
            return Outcome(run_dir)
    checked = validate(args)
    if res is None and args.preset_applied:
        print(f"preset {args.preset_applied} (flags given win; --preset none: the plain defaults)", file=sys.stderr)
    if res is None:
        run_dir = Path(args.runs_dir) / (args.run_name or run_dir_name(args))
        if run_dir.exists():
            raise UsageError(f"run directory {run_dir} already exists; pick another --run-name or --resume it")
    device = resolve_device(args)
    torch.set_num_threads(args.torch_threads)
    tune_malloc()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 2. Envs, agent, optimizer and the rollout source (this process, or a worker with --async-rollouts).
    try:
        env = make_env(args, args.num_envs, device)
        if res is None:  # what --obs-encoder means for this env, for config.json (auto: cnn for images)
            args = dataclasses.replace(args, obs_encoder_resolved=resolve_encoder(env.single_observation_space, args.obs_encoder))
        agent = make_agent(args, env, checked.memory_options).to(device)
        make_normalizer(args, env, device)  # its checks here, before a rollout worker builds its own
    except ValueError as e:
        raise UsageError(str(e)) from None
    optimizer = make_optimizer(args, agent)
    collector = make_collector(args, agent, env, checked.bptt_len, device)
    success = envs.suite_of(args.env_id).success  # a return that counts as solved (MiniGrid: > 0)
    batch_size = args.num_envs * args.num_steps
    num_updates = max(1, args.total_timesteps // batch_size)
    update, global_step, elapsed0 = 0, 0, 0.0

    # 3. Run directory: new (never overwriting) or the resumed one, restored exactly.
    try:
        if res is None:
            runs.create(run_dir, args)
        else:
            runs.restore_weights(agent, optimizer, res.ckpt, run_dir)
            update, global_step, elapsed0 = res.ckpt["update"], res.ckpt["global_step"], res.ckpt.get("elapsed", 0.0)
            collector.load_state_dict(res.ckpt)
            ckpt_io.set_rng_state(res.ckpt["rng"])
            runs.clean_partial_writes(run_dir)
            if res.extended_from is not None:
                runs.start_extension(res)
                print(f"extending {run_dir} from {res.extended_from:,} to {args.total_timesteps:,} steps; the learning "
                      f"rate anneals over the new total from here", file=sys.stderr)
    except BaseException:
        collector.close()
        raise
    # Events after the checkpoint are from work that is about to be redone: drop them (the
    # checkpointed update's own scalars, logged just before it was saved, stay).
    writer = SummaryWriter(str(run_dir), purge_step=global_step + 1 if res is not None else None)
    if res is None:
        table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    saved_update = res.ckpt["update"] if res is not None else None
    source_state: dict = {}  # the rollout source's state at the last checkpoint

    def save_checkpoint() -> None:
        nonlocal saved_update, source_state
        source_state = collector.state_dict()  # collector, env, async: the rollout source's state
        ckpt_io.save(run_dir / "checkpoint.pt", {
            "args": dataclasses.asdict(args), "update": update, "global_step": global_step,
            "elapsed": elapsed0 + time.time() - start_time,
            "model": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": ckpt_io.rng_state(),
            **source_state,
        })
        saved_update = update

    # 4. Signals: finish the current update, checkpoint, exit. A second signal exits at once.
    stop = {"signal": None}

    def request_stop(signum, _frame):
        stop["signal"] = signum
        signal.signal(signum, signal.SIG_DFL)

    old_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    # 5. The loop: collect a rollout, update, log.
    progress = Progress(args.total_timesteps, args.progress)
    start_time = time.time()
    start_step = global_step
    recent: list[float] = []
    try:
        while update < num_updates:
            update += 1
            if args.anneal_lr:
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (update - 1.0) / num_updates)
            agent.eval()
            rollout, st = collector.collect(agent, prefetch=update < num_updates)
            global_step += batch_size
            agent.train()
            try:
                losses = ppo_update(agent, optimizer, rollout, args, checked.bptt_len, update_index=update)
            except NonFiniteError as e:
                writer.close()
                kept = (f"the last good checkpoint in {run_dir} (update {saved_update}) is kept" if saved_update is not None else
                        f"no checkpoint had been written yet (the first comes at update {args.checkpoint_every}); {run_dir} holds the config and events")
                print(f"error: {e} at env step {global_step}; stopped before touching the weights; {kept}", file=sys.stderr)
                raise SystemExit(1) from None

            sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
            if st.returns:
                writer.add_scalar("charts/episodic_return", float(np.mean(st.returns)), global_step)
                writer.add_scalar("charts/episodic_length", float(np.mean(st.lengths)), global_step)
                if success is not None:
                    writer.add_scalar("charts/success_rate", float(np.mean([success(r) for r in st.returns])), global_step)
                recent = (recent + st.returns)[-100:]
            if st.accuracy:
                writer.add_scalar("charts/accuracy", float(np.mean(st.accuracy)), global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            for k, v in losses.items():
                writer.add_scalar(k, v, global_step)
            for k, v in agent.memory.diagnostics().items():
                writer.add_scalar(f"memory/{k}", v, global_step)
            progress.update(global_step, sps, float(np.mean(recent)) if recent else None)

            if on_update is not None and on_update(update):
                stop["signal"] = stop["signal"] or signal.SIGINT
            if stop["signal"] is not None:
                save_checkpoint()
                writer.close()
                progress.close()
                print(f"stopped by signal {stop['signal']}: checkpoint saved at update {update}; "
                      f"continue with: python train.py --resume {run_dir}", file=sys.stderr)
                return Outcome(run_dir, int(stop["signal"]))
            if update % args.checkpoint_every == 0:
                save_checkpoint()
        save_checkpoint()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        collector.close()

    progress.close()
    result = {
        "env_id": args.env_id, "backbone": args.backbone, "seed": args.seed, "global_step": global_step,
        "wall_time": elapsed0 + time.time() - start_time, "SPS": (global_step - start_step) / max(time.time() - start_time, 1e-9),
        "final_return": float(np.mean(recent)) if recent else None,
    }
    if args.eval_episodes:
        result.update(evaluate(args, agent, device, writer, global_step, normalizer_state(source_state)))
    writer.close()
    runs.write_json(run_dir / "result.json", result)
    return Outcome(run_dir)


def evaluate(args: Args, agent, device: torch.device, writer, global_step: int, norm_state: dict | None = None) -> dict:
    """Greedy policy, one episode per env on fresh envs (seeds disjoint from training's); with
    --norm-obs, observations normalized by the training statistics ``norm_state``, frozen."""
    from agents.rollout import RolloutCollector

    n = args.eval_episodes
    env = make_env(args, n, device)
    steps = min(args.num_steps, 256)
    norm = make_normalizer(args, env, device)
    if norm is not None:
        norm.load_state_dict(norm_state)
        norm = norm.frozen_obs()
    collector = RolloutCollector(env, agent, steps, steps, device, seed=args.seed + 1_000_000, normalizer=norm)
    first: dict[int, tuple[float, float | None]] = {}
    agent.eval()
    for _ in range(10_000):
        _, st = collector.collect(agent, greedy=True)
        for i, (env_i, ret) in enumerate(zip(st.env_ids, st.returns)):
            acc = st.accuracy[i] if len(st.accuracy) == len(st.returns) else None
            first.setdefault(env_i, (ret, acc))
        if len(first) >= n:
            break
    collector.close()
    rets = [r for r, _ in first.values()]
    out = {"eval_return": float(np.mean(rets)), "eval_episodes": len(rets)}
    writer.add_scalar("eval/episodic_return", out["eval_return"], global_step)
    accs = [a for _, a in first.values() if a is not None]
    if accs:
        out["eval_accuracy"] = float(np.mean(accs))
        writer.add_scalar("eval/accuracy", out["eval_accuracy"], global_step)
    return out


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    try:
        outcome = run(args, given=given_fields(args, argv))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.stopped_by is not None:  # checkpointed and stopped early: the shell's 128 + signal
        return 128 + outcome.stopped_by
    print(f"run directory: {outcome.run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
