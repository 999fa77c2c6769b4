"""Watch a trained agent: play a run's checkpoint on its own env and report (and film) what it does.

    python play.py RUN_DIR [--episodes 10] [--greedy | --sample] [--video PATH.gif|.mp4] [--seed S]

Loads RUN_DIR/checkpoint.pt with the run's stored settings (backbone, options, encoder, env
settings), builds the run's env (one env), and plays --episodes episodes. Memory is carried from
step to step and restarted at each episode's first observation, as in training (the reset flag of
``agent.step``). Actions: greedy (the default: the most likely action, the distribution's mean for
Box actions) or sampled (--sample). Prints each episode's return and length, then the mean return
with a 95% bootstrap CI over episodes, the success rate where the env's suite defines success, and
NoisyRecall's accuracy.

--video writes the frames of every episode (the env's rgb_array render: MiniGrid's full view with
the agent's view highlighted, any env that renders rgb_array) as a .gif (Pillow) or .mp4 (needs
imageio with ffmpeg). Episodes are seeded from --seed (default: the run's seed + 2,000,000, disjoint
from training's and from --eval-episodes'); the first episode resets with it, the later ones
continue the env's random stream, so a seed gives the same episodes every time.

Bad input (no such run, no checkpoint, an unfinished run, an env without rgb_array rendering, a
video path that exists or has another suffix) is one line on stderr and exit status 2, before
anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

VIDEO_SUFFIXES = (".gif", ".mp4")


class PlayError(ValueError):
    """Bad input: one line, exit 2."""


@dataclass
class Played:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    episode_starts: list[int] = field(default_factory=list)  # index in frames where each episode starts


def load_run(run_dir: Path, device: torch.device, render: bool):
    """(args, env, agent) for a finished run: its stored settings, one env of its own kind (rendering
    rgb_array frames if ``render``) and the checkpoint's weights."""
    from agents import checkpoint as ckpt_io
    from agents.build import make_agent, make_env
    from agents.config import Args

    if not run_dir.is_dir():
        raise PlayError(f"no run directory {run_dir}")
    try:
        ckpt = ckpt_io.load(run_dir / "checkpoint.pt", map_location=device)
    except ckpt_io.CheckpointError as e:
        raise PlayError(str(e)) from None
    if not (run_dir / "result.json").exists():
        raise PlayError(f"{run_dir} has not finished (no result.json; at {ckpt.get('global_step', 0):,} steps): "
                        f"finish it with python train.py --resume {run_dir}")
    try:
        args = Args(**{"head_size": 0, **ckpt["args"]})
    except TypeError as e:
        raise PlayError(f"checkpoint {run_dir / 'checkpoint.pt'} holds arguments this memrl does not know ({e})") from None
    if render:
        kwargs = [kv for kv in args.env_kwargs if not kv.startswith("render_mode=")]
        args = dataclasses.replace(args, env_kwargs=(*kwargs, "render_mode='rgb_array'"))
    try:
        env = make_env(args, 1, device)
    except (ValueError, TypeError) as e:
        if render and "render_mode" in str(e):
            raise PlayError(f"env {args.env_id!r} has no rgb_array rendering (it takes no render_mode); "
                            "play it without --video") from None
        raise PlayError(f"cannot make {args.env_id!r} for playing: {str(e).splitlines()[0]}") from None
    agent = make_agent(args, env).to(device)
    try:
        agent.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        env.close()
        raise PlayError(f"checkpoint {run_dir / 'checkpoint.pt'}: weights do not fit its arguments ({str(e).splitlines()[0][:200]})") from None
    agent.eval()
    return args, env, agent


def _frame(env) -> np.ndarray:
    out = env.render()
    if isinstance(out, (list, tuple)):
        out = out[0] if out else None
    if not isinstance(out, np.ndarray) or out.ndim != 3:
        raise PlayError(f"env {getattr(env.spec, 'id', env)} has no rgb_array rendering (render() gave "
                        f"{type(out).__name__}); play it without --video")
    return out


def _normalizer(args, env, ckpt_run: Path, device):
    """The run's observation normalization, frozen at the training statistics (None when off)."""
    from agents import checkpoint as ckpt_io
    from agents.build import make_normalizer
    from agents.rollout import normalizer_state

    norm = make_normalizer(args, env, device)
    if norm is None:
        return None
    norm.load_state_dict(normalizer_state(ckpt_io.load(ckpt_run / "checkpoint.pt", map_location=device)))
    return norm.frozen_obs()


@torch.no_grad()
def play(env, agent, episodes: int, greedy: bool, seed: int, video: bool = False, device=torch.device("cpu"),
         norm=None, max_steps: int = 100_000) -> Played:
    """``episodes`` episodes of ``agent`` on ``env`` (a one-env VectorEnv)."""
    from agents.encoders import obs_to_tensor

    out = Played()
    state = agent.initial_state(1, device)
    for ep in range(episodes):
        obs, info = env.reset(seed=seed if ep == 0 else None)
        reset = torch.ones(1, dtype=torch.bool, device=device)  # the memory restarts at this observation
        ret, length = 0.0, 0
        out.episode_starts.append(len(out.frames))
        if video:
            out.frames.append(_frame(env))
        while True:
            o = obs_to_tensor(obs, device)
            o = o if norm is None else norm.obs(o, False)
            params, _, state = agent.step(o, state, reset)
            action, _ = agent.dist.act(params, greedy)
            env_action = agent.dist.to_env(action)
            obs, reward, term, trunc, info = env.step(env_action.cpu().numpy())
            reset = torch.zeros(1, dtype=torch.bool, device=device)
            ret += float(np.asarray(reward).reshape(-1)[0])
            length += 1
            if video:
                out.frames.append(_frame(env))
            if bool(np.asarray(term).reshape(-1)[0]) or bool(np.asarray(trunc).reshape(-1)[0]) or length >= max_steps:
                break
        out.returns.append(ret)
        out.lengths.append(length)
        acc = info.get("accuracy") if isinstance(info, dict) else None
        if acc is not None:
            out.accuracy.append(float(np.asarray(acc).reshape(-1)[0]))
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Frames as a .gif (Pillow) or .mp4 (imageio + ffmpeg), written to a temporary name first."""
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    if path.suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    else:
        import imageio.v2 as imageio

        imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], fps=fps)
    tmp.replace(path)


def _check_video_path(path: Path) -> None:
    if path.suffix not in VIDEO_SUFFIXES:
        raise PlayError(f"--video {path}: the suffix must be one of {', '.join(VIDEO_SUFFIXES)}")
    if path.exists():
        raise PlayError(f"--video {path} exists; pick another path (nothing is overwritten)")
    if not path.parent.is_dir():
        raise PlayError(f"--video {path}: no directory {path.parent}")
    if path.suffix == ".mp4":
        try:
            import imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise PlayError("--video .mp4 needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                            "or write a .gif") from None


def summary(played: Played, success=None) -> list[str]:
    from experiments.stats import bootstrap_ci

    lines = [f"episode {i + 1}: return {r:.3f}, length {n}" for i, (r, n) in enumerate(zip(played.returns, played.lengths))]
    mean = float(np.mean(played.returns))
    if len(played.returns) > 1:
        ci = bootstrap_ci(played.returns)
        lines.append(f"return {mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] (mean, 95% bootstrap CI over {len(played.returns)} episodes)")
    else:
        lines.append(f"return {mean:.3f} (1 episode)")
    lines.append(f"length {np.mean(played.lengths):.1f} (mean)")
    if success is not None:
        rate = float(np.mean([success(r) for r in played.returns]))
        lines.append(f"success {rate:.2f} ({sum(success(r) for r in played.returns)} of {len(played.returns)})")
    if played.accuracy:
        lines.append(f"accuracy {np.mean(played.accuracy):.3f} (mean)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--episodes", type=int, default=10)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="greedy", action="store_true", default=True, help="the most likely action (default)")
    mode.add_argument("--sample", dest="greedy", action="store_false", help="sample from the policy")
    p.add_argument("--video", type=Path, default=None, help="write the frames as PATH.gif or PATH.mp4")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="episode seed (default: the run's seed + 2,000,000)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        if a.episodes < 1:
            raise PlayError(f"--episodes must be >= 1, got {a.episodes}")
        if a.video is not None:
            _check_video_path(a.video)
        device = torch.device(a.device)
        torch.set_num_threads(1)
        args, env, agent = load_run(a.run_dir, device, render=a.video is not None)
        try:
            import envs

            norm = _normalizer(args, env, a.run_dir, device)
            seed = args.seed + 2_000_000 if a.seed is None else a.seed
            played = play(env, agent, a.episodes, a.greedy, seed, video=a.video is not None, device=device, norm=norm)
        finally:
            env.close()
    except PlayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.run_dir}: {args.env_id}, {args.backbone}, {'greedy' if a.greedy else 'sampled'} actions, seed {seed}")
    print("\n".join(summary(played, envs.suite_of(args.env_id).success)))
    if a.video is not None:
        write_video(a.video, played.frames, a.fps)
        print(f"video: {a.video} ({len(played.frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
