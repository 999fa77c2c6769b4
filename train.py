"""Train one PPO agent with a memory backbone.

    python train.py                                   # lstm on a small NoisyRecall (about a minute)
    python train.py --env-id MiniGrid-MemoryS9-v0 --backbone gru --seed 2
    python train.py --env-id memrl/NoisyRecall-v0 --backbone mlstm --seq-len 64
    python train.py --backbone mru --memory-options kind=ldu num_heads=4
    python train.py --resume runs/MiniGrid-MemoryS7-v0__lstm__1__1700000000

Writes runs/<env>__<backbone>__<seed>__<time>/: TensorBoard events (CleanRL's tags), config.json,
checkpoint.pt (atomic, every --checkpoint-every updates, at the end and on SIGINT/SIGTERM) and
result.json when the run finishes. Reads top to bottom in the order it runs, as CleanRL does.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch


@dataclass
class Args:
    # --- what to train
    env_id: str = "memrl/NoisyRecall-v0"
    """env id: a MiniGrid Memory id, memrl/NoisyRecall-v0, or any gymnasium id with Discrete actions ('module:EnvId' imports a package)"""
    backbone: str = "lstm"
    """memory backbone: lstm, gru, mlp, mlstm, mlstm-orth, mru (see memory.names())"""
    memory_options: tuple[str, ...] = ()
    """backbone options as key=value, e.g. num_heads=4 kind=ldu (python -c 'import memory; print(memory.describe("mru"))' lists them)"""
    hidden_size: int = 128
    """width of the observation embedding and of the memory output"""
    head_size: int = 0
    """width of a hidden layer (Linear+ReLU, shared by policy and value) after the memory; 0: linear heads as CleanRL"""
    obs_encoder: Literal["onehot", "cells"] = "onehot"
    """observation encoder: onehot (ids one-hot, Box flattened; any env) or cells (MiniGrid only: a shared embedding per view cell, flattened and averaged over the view; see agents/encoders.py)"""
    branch_size: int = 0
    """width of a separate hidden layer (Linear+ReLU) for the policy and one for the value, after the head; 0: none"""
    relu_memory: bool = False
    """apply a ReLU to the memory output (before the head), as the public LSTM PPO baseline does"""
    actor_init_gain: float = 0.01
    """orthogonal-init gain of the policy's output layer (CleanRL: 0.01, a near-uniform first policy; the public LSTM PPO baseline: sqrt(2))"""
    seed: int = 1
    """seed of torch, numpy, python and the envs (env i gets seed + i)"""
    total_timesteps: int = 250_000
    """env steps to train for (all envs together)"""

    # --- envs
    num_envs: int = 16
    """parallel envs"""
    num_steps: int = 128
    """steps per env per rollout"""
    view_size: int = 3
    """MiniGrid only: the agent's view (odd, >= 3; MiniGrid's own default is 7, memory benchmarks use 3)"""
    movement_only: bool = True
    """MiniGrid only: keep the 3 movement actions (left, right, forward), as memory benchmarks do"""
    vocab_size: int = 8
    """NoisyRecall only: vocabulary size (keys, values and noise tokens); a quick setting by default, MAD's baseline is 32"""
    noise_vocab_size: int = 2
    """NoisyRecall only: how many tokens are noise (MAD's baseline: 16)"""
    seq_len: int = 32
    """NoisyRecall only: sequence length, an episode is seq_len - 1 steps (MAD's baseline: 128)"""
    frac_noise: float = 0.2
    """NoisyRecall only: probability that a slot is a noise pair"""
    env_kwargs: tuple[str, ...] = ()
    """extra keyword arguments for gymnasium.make as key=value (values parsed as Python literals)"""

    # --- PPO (CleanRL's defaults)
    learning_rate: float = 1e-3
    """Adam learning rate (CleanRL's Atari default is 2.5e-4; small recurrent agents learned memory
    several times faster with 1e-3 here: cue recall over 8 steps solved at 50k steps vs not at 100k)"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    num_minibatches: int = 4
    """minibatches per epoch (groups of whole sequences)"""
    update_epochs: int = 4
    """epochs per update"""
    bptt_len: int | None = None
    """cut each env's rollout into chunks of this many steps (with their stored start states); default: the whole rollout"""
    norm_adv: bool = True
    """normalize advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss as in PPO's reference implementation"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    target_kl: float | None = None
    """stop the update's epochs early once the approximate KL exceeds this"""

    # --- running
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto picks cuda when available"""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest on small CPU machines; see README)"""
    async_rollouts: bool = False
    """collect the next rollout in a worker process while the learner updates (the rollouts then lag the policy by one update; see agents/async_rollout.py)"""
    runs_dir: str = "runs"
    """where run directories are created"""
    run_name: str | None = None
    """run directory name (default <env>__<backbone>__<seed>__<unix time>); never overwritten"""
    resume: str | None = None
    """continue the run in this directory from its checkpoint (its config is used; of the other flags only --torch-threads, --progress and --checkpoint-every apply)"""
    checkpoint_every: int = 50
    """write a checkpoint every this many updates (also at the end and on SIGINT/SIGTERM)"""
    eval_episodes: int = 0
    """after training, evaluate the greedy policy on this many fresh episodes (one per env)"""
    progress: bool = True
    """show a progress line on stderr"""


# Flags that --resume takes from the command line instead of the checkpoint's config.
RUNTIME_FIELDS = ("torch_threads", "progress", "checkpoint_every")


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


# ----------------------------------------------------------------------------- validation


def parse_literal_kwargs(items: tuple[str, ...], what: str) -> dict:
    import ast

    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{what} entry {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def validate(args: Args) -> tuple[dict, int]:
    """Check everything that can be checked before building anything. Returns (memory options,
    bptt length)."""
    import memory

    positive = ("total_timesteps", "num_envs", "num_steps", "hidden_size", "num_minibatches", "update_epochs", "torch_threads", "checkpoint_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.head_size < 0:
        raise UsageError(f"--head-size must be >= 0 (0: linear heads), got {args.head_size}")
    if args.branch_size < 0:
        raise UsageError(f"--branch-size must be >= 0 (0: no branch layers), got {args.branch_size}")
    if not args.actor_init_gain > 0:
        raise UsageError(f"--actor-init-gain must be > 0, got {args.actor_init_gain}")
    if args.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
    if args.backbone not in memory.names():
        raise UsageError(f"unknown backbone {args.backbone!r}; choose one of: {', '.join(memory.names())}")
    try:
        mem_opts = memory.parse_options(args.backbone, list(args.memory_options))
    except ValueError as e:
        raise UsageError(str(e)) from None
    bptt = args.num_steps if args.bptt_len is None else args.bptt_len
    if bptt < 1 or args.num_steps % bptt:
        raise UsageError(f"--num-steps ({args.num_steps}) must be a multiple of --bptt-len ({bptt})")
    n_seq = args.num_envs * (args.num_steps // bptt)
    if args.num_minibatches > n_seq:
        raise UsageError(f"--num-minibatches ({args.num_minibatches}) exceeds the number of sequences per rollout ({n_seq} = num-envs x num-steps / bptt-len)")
    if not (0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise UsageError(f"--gamma must be in (0, 1] and --gae-lambda in [0, 1], got {args.gamma} and {args.gae_lambda}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available; use --device cpu or auto")
    return mem_opts, bptt


def tune_malloc() -> None:
    """Keep glibc from mapping and unmapping each large temporary afresh: batched matrix work
    (Newton-Schulz on [8192, 32, 32]) ran 1.5-2.4x faster with these thresholds on the 2-core
    machines (benchmarks/ops.py --malloc-compare). The same as setting MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ before start; a no-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(args: Args) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def make_env(args: Args, num_envs: int, device: torch.device):
    import envs

    if args.env_id.split(":")[-1] == envs.NOISY_RECALL_ID:
        kwargs = dict(vocab_size=args.vocab_size, noise_vocab_size=args.noise_vocab_size, seq_len=args.seq_len, frac_noise=args.frac_noise)
        # On a GPU the env keeps the whole rollout there (no host copies).
        env_device = str(device) if device.type == "cuda" else None
        return envs.make_vec(args.env_id, num_envs, args.seed, device=env_device, env_kwargs=kwargs)
    extra = parse_literal_kwargs(args.env_kwargs, "--env-kwargs")
    if envs.is_minigrid(args.env_id):
        return envs.make_vec(args.env_id, num_envs, args.seed, view_size=args.view_size, movement_only=args.movement_only, env_kwargs=extra)
    return envs.make_vec(args.env_id, num_envs, args.seed, env_kwargs=extra)


def make_agent(args: Args, env):
    """The actor-critic for ``env`` as ``args`` describe it (the rollout worker builds the same)."""
    import memory
    from agents.actor_critic import ActorCritic

    opts = memory.parse_options(args.backbone, list(args.memory_options))
    backbone = memory.make(args.backbone, args.hidden_size, args.hidden_size, **opts)
    return ActorCritic(
        env.single_observation_space, int(env.single_action_space.n), backbone, args.head_size,
        branch_size=args.branch_size, relu_memory=args.relu_memory, actor_init_gain=args.actor_init_gain,
        obs_encoder=args.obs_encoder,
    )


def make_optimizer(args: Args, agent: torch.nn.Module, fused: bool | None = None) -> torch.optim.Adam:
    """Adam with CleanRL's eps. ``fused`` (default: on CPU and CUDA) updates every parameter in one
    kernel: a PPO update of lstm on MiniGrid-MemoryS7 (16 x 128 steps, 4 x 4 minibatches) spends
    about 12% of its time in the foreach Adam step on CPU; the fused step matches it to float
    rounding (1 ulp after 50 steps)."""
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in agent.parameters())
    return torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=fused or None)


def run_dir_name(args: Args) -> str:
    env = args.env_id.replace("/", "-").replace(":", "-")
    return f"{env}__{args.backbone}__{args.seed}__{int(time.time())}"


# ----------------------------------------------------------------------------- progress


class Progress:
    """One line on stderr: steps, SPS, recent return. Redrawn in place on a terminal; a plain
    line every 10% otherwise (logs stay readable)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.last_draw, self.last_decile = 0.0, -1

    def update(self, step: int, sps: float, ret: float | None, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.time()
        decile = int(10 * step / self.total)
        if self.tty and now - self.last_draw < 0.5 and step < self.total:
            return
        if not self.tty and decile == self.last_decile and step < self.total:
            return
        self.last_draw, self.last_decile = now, decile
        frac = min(step / self.total, 1.0)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        r = "  n/a" if ret is None else f"{ret:7.3f}"
        line = f"[{bar}] {step:>10,}/{self.total:,} steps | {sps:7.0f} SPS | return {r}{extra}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


# ----------------------------------------------------------------------------- training


def train(args: Args, on_update: Callable[[int], bool] | None = None) -> Path:
    """Train (or resume) one run; returns its directory. ``on_update(update)`` is called after
    each update and may return True to stop as a signal would (tests use it)."""
    from torch.utils.tensorboard import SummaryWriter

    import agents.checkpoint as ckpt_io
    import envs
    from agents.ppo import NonFiniteError, PPOConfig, ppo_update
    from agents.rollout import RolloutCollector

    # 1. Config: a fresh run, or the stored config of the run being resumed.
    ckpt = None
    if args.resume is not None:
        run_dir = Path(args.resume)
        try:
            ckpt = ckpt_io.load(run_dir / "checkpoint.pt")
        except ckpt_io.CheckpointError as e:
            raise UsageError(str(e)) from None
        # The run's config comes from the checkpoint; how this process runs comes from the
        # command line (threads are a property of the machine it resumes on, not of the run).
        runtime = {k: getattr(args, k) for k in RUNTIME_FIELDS}
        # Checkpoints written before --head-size existed had linear heads.
        args = Args(**{"head_size": 0, **ckpt["args"], **runtime, "resume": str(run_dir)})
    _, bptt_len = validate(args)  # make_agent parses the memory options again
    if ckpt is None:
        run_dir = Path(args.runs_dir) / (args.run_name or run_dir_name(args))
        if run_dir.exists():
            raise UsageError(f"run directory {run_dir} already exists; pick another --run-name or --resume it")
    device = resolve_device(args)
    torch.set_num_threads(args.torch_threads)
    tune_malloc()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 2. Envs and agent.
    try:
        env = make_env(args, args.num_envs, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        agent = make_agent(args, env).to(device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    optimizer = make_optimizer(args, agent)
    if args.async_rollouts:
        # The worker builds its own envs (same seeds) and acts on CPU; these were for the spaces.
        from agents.async_rollout import AsyncCollector

        env.close()
        env = None
        collector = AsyncCollector(dataclasses.asdict(args), bptt_len, device)
    else:
        collector = RolloutCollector(env, agent, args.num_steps, bptt_len, device, seed=args.seed)
    pending = None  # async: a rollout received but not trained on yet (restored from a checkpoint)
    cfg = PPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)})
    is_minigrid = envs.is_minigrid(args.env_id)
    batch_size = args.num_envs * args.num_steps
    num_updates = max(1, args.total_timesteps // batch_size)
    update, global_step, elapsed0 = 0, 0, 0.0

    # 3. Run directory: new (never overwriting) or the resumed one.
    if ckpt is None:
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
    else:
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        update, global_step, elapsed0 = ckpt["update"], ckpt["global_step"], ckpt.get("elapsed", 0.0)
        if args.async_rollouts:  # the worker's envs, collector and RNG, and the rollout in flight
            from agents.async_rollout import rollout_to

            collector.set_state(ckpt["async"]["worker"])
            if ckpt["async"]["pending"] is not None:
                ro, stats = ckpt["async"]["pending"]
                pending = (rollout_to(ro, device), stats)
        else:
            collector.load_state_dict({k: _to_device(v, device) for k, v in ckpt["collector"].items()})
            if ckpt.get("env") is not None:
                import cloudpickle

                env.close()
                env = collector.env = cloudpickle.loads(ckpt["env"])
            else:
                print("note: this checkpoint holds no env state; envs restart from a reset", file=sys.stderr)
        ckpt_io.set_rng_state(ckpt["rng"])
    # Events after the checkpoint are from work that is about to be redone: drop them (the
    # checkpointed update's own scalars, logged just before it was saved, stay).
    writer = SummaryWriter(str(run_dir), purge_step=global_step + 1 if ckpt is not None else None)
    if ckpt is None:
        table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def save_checkpoint() -> None:
        nonlocal pending
        async_blob, env_blob, collector_state = None, None, {}
        if args.async_rollouts:
            # The rollout in flight is part of the run's state: wait for it and store it (the next
            # update trains on it either way), with the worker's envs and RNG after it.
            if collector.in_flight:
                pending = collector.result()
            async_blob = {"worker": collector.get_state(), "pending": pending}
        else:
            collector_state = collector.state_dict()
            try:
                import cloudpickle

                env_blob = cloudpickle.dumps(env)
            except Exception:  # noqa: BLE001 - an unpicklable env resumes from a reset instead
                env_blob = None
        ckpt_io.save(run_dir / "checkpoint.pt", {
            "args": dataclasses.asdict(args), "update": update, "global_step": global_step,
            "elapsed": elapsed0 + time.time() - start_time,
            "model": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": ckpt_io.rng_state(),
            "collector": collector_state, "env": env_blob, "async": async_blob,
        })

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
            if args.async_rollouts:
                if pending is None:
                    if not collector.in_flight:  # the first rollout of a fresh run
                        collector.request(agent)
                    pending = collector.result()
                rollout, st = pending
                pending = None
                if update < num_updates:  # the next rollout, with the parameters this update starts from
                    collector.request(agent)
            else:
                collector.stats.clear()
                agent.eval()
                rollout = collector.collect(agent)
                st = collector.stats
            global_step += batch_size
            agent.train()
            try:
                losses = ppo_update(agent, optimizer, rollout, cfg, bptt_len, update_index=update)
            except NonFiniteError as e:
                writer.close()
                print(f"error: {e} at env step {global_step}; stopped before touching the weights; "
                      f"the last good checkpoint in {run_dir} is kept", file=sys.stderr)
                raise SystemExit(1) from None

            sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
            if st.returns:
                writer.add_scalar("charts/episodic_return", float(np.mean(st.returns)), global_step)
                writer.add_scalar("charts/episodic_length", float(np.mean(st.lengths)), global_step)
                if is_minigrid:  # reward > 0 only when the goal was reached
                    writer.add_scalar("charts/success_rate", float(np.mean(np.array(st.returns) > 0)), global_step)
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
                train.stopped_by = stop["signal"]
                return run_dir
            if update % args.checkpoint_every == 0:
                save_checkpoint()
        save_checkpoint()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if args.async_rollouts:
            collector.close()

    progress.close()
    result = {
        "env_id": args.env_id, "backbone": args.backbone, "seed": args.seed, "global_step": global_step,
        "wall_time": elapsed0 + time.time() - start_time, "SPS": (global_step - start_step) / max(time.time() - start_time, 1e-9),
        "final_return": float(np.mean(recent)) if recent else None,
    }
    if args.eval_episodes:
        result.update(evaluate(args, agent, device, bptt_len, writer, global_step))
    writer.close()
    if env is not None:
        env.close()
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return run_dir


def evaluate(args: Args, agent, device: torch.device, bptt_len: int, writer, global_step: int) -> dict:
    """Greedy policy, one episode per env on fresh envs (seeds disjoint from training's)."""
    from agents.rollout import RolloutCollector

    n = args.eval_episodes
    env = make_env(args, n, device)
    collector = RolloutCollector(env, agent, min(args.num_steps, 256), min(args.num_steps, 256), device, seed=args.seed + 1_000_000)
    first: dict[int, tuple[float, float | None]] = {}
    agent.eval()
    for _ in range(10_000):
        collector.stats.clear()
        collector.collect(agent, greedy=True)
        st = collector.stats
        for i, (env_i, ret) in enumerate(zip(st.env_ids, st.returns)):
            acc = st.accuracy[i] if len(st.accuracy) == len(st.returns) else None
            first.setdefault(env_i, (ret, acc))
        if len(first) >= n:
            break
    env.close()
    rets = [r for r, _ in first.values()]
    out = {"eval_return": float(np.mean(rets)), "eval_episodes": len(rets)}
    writer.add_scalar("eval/episodic_return", out["eval_return"], global_step)
    accs = [a for _, a in first.values() if a is not None]
    if accs:
        out["eval_accuracy"] = float(np.mean(accs))
        writer.add_scalar("eval/accuracy", out["eval_accuracy"], global_step)
    return out


def _to_device(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, tuple):
        return tuple(_to_device(x, device) for x in v)
    if isinstance(v, dict):
        return {k: _to_device(x, device) for k, x in v.items()}
    return v


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    train.stopped_by = None
    try:
        run_dir = train(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if train.stopped_by is not None:  # checkpointed and stopped early: the shell's 128 + signal
        return 128 + int(train.stopped_by)
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
