"""What a trained MiniGrid Memory agent knows when it decides, and what it does with it.

    python benchmarks/minigrid_probe.py runs/MiniGrid-MemoryS9-v0__lstm__1__1700000000 [--episodes 600]

Plays --episodes episodes (sampled actions, fresh seeds) with the run's checkpoint and reports:

- success by case: the cue (the start-room object) x the side of its match at the end; success by
  start column (MiniGrid starts the agent facing the hallway in a random column; from column 1 the
  cue is in view at once, from the others the agent must turn back to see it) and how often the cue
  came into view at all;
- at the decision (the agent at the end of the hallway facing one of the two objects, the first
  time in an episode): P(forward) when that object matches the cue and when it does not;
- linear probes (logistic regression fit on half the decisions, accuracy on the other half) for
  the cue, the object in front and "match" = (cue == object), read from the memory output and,
  with --head-size, from the head layer's output.

How to read it: a run at chance whose memory output decodes the cue (probe >> 0.5) but not
"match", with P(forward) the same for both, has stored the cue and failed to learn the comparison;
a cue probe near 0.5 means the memory lost the cue. Works for MiniGrid-Memory* ids and the
diagnostic variants (envs/minigrid_probes.py) with MiniGrid's fixed room layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from agents import build
from agents.config import Args
from agents.actor_critic import ActorCritic
from agents.encoders import obs_to_tensor


def load_agent(run_dir: Path) -> tuple[Args, ActorCritic]:
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    known = {f for f in Args.__dataclass_fields__}
    args = Args(**{"head_size": 0, **{k: v for k, v in ckpt["args"].items() if k in known}})
    env = build.make_env(args, 1, torch.device("cpu"))
    agent = build.make_agent(args, env)
    agent.load_state_dict(ckpt["model"])
    env.close()
    return args, agent.eval()


def play(args: Args, agent: ActorCritic, episodes: int, seed: int, max_steps: int = 400) -> dict:
    """One env, sampled actions. Returns per-episode cases and per-decision features/labels."""
    env = build.make_env(args, 1, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    cases, feats, labels = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        u = env.envs[0].unwrapped
        cue = type(u.grid.get(1, u.height // 2 - 1)).__name__
        side = "up" if u.success_pos[1] < u.height // 2 else "down"
        start, saw = int(u.agent_pos[0]), False
        state, reset = agent.initial_state(1), torch.ones(1, 1, dtype=torch.bool)
        ret, decided = 0.0, False
        with torch.no_grad():
            for _ in range(max_steps):
                saw = saw or u.agent_sees(1, u.height // 2 - 1)
                x = agent._features(obs_to_tensor(obs, "cpu")[None], (1, 1))
                y, state = agent.memory(x, state, reset)
                h = agent.head_features(y)
                logits = agent.actor(h)[0, 0]
                end_column = u.agent_pos[0] == u.success_pos[0]
                if not decided and end_column and u.agent_dir in (1, 3):  # facing down / up
                    fx, fy = (int(v) for v in u.agent_pos + 2 * u.dir_vec)
                    seen = type(u.grid.get(fx, fy)).__name__
                    p_fwd = torch.softmax(logits, -1)[2].item()
                    feats.append(np.concatenate([y[0, 0].numpy(), h[0, 0].numpy()]))
                    labels.append((cue == "Key", seen == "Key", cue == seen, p_fwd))
                    decided = True
                a = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
                obs, r, term, trunc, _ = env.step(np.array([a]))
                ret += float(r[0])
                reset = torch.zeros(1, 1, dtype=torch.bool)
                if term[0] or trunc[0]:
                    break
        cases.append((cue, side, ret > 0, start, saw))
    env.close()
    return {"cases": cases, "feats": np.array(feats), "labels": np.array(labels, dtype=np.float64)}


def linear_probe(x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy of an L2-regularized logistic regression (fit on the first half)."""
    n = len(x) // 2
    if n < 4 or len(set(y[:n].tolist())) < 2:
        return float("nan")
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mu, sd = xt[:n].mean(0), xt[:n].std(0) + 1e-6
    xn = (xt - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xn[:n] @ w + b, yt[:n]) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (((xn[n:] @ w + b) > 0).double() == yt[n:]).double().mean().item()


def report(args: Args, agent: ActorCritic, data: dict) -> dict:
    cases = data["cases"]
    out: dict = {"episodes": len(cases), "success": float(np.mean([s for _, _, s, _, _ in cases]))}
    for cue in ("Ball", "Key"):
        for side in ("up", "down"):
            sel = [s for c, sd, s, _, _ in cases if c == cue and sd == side]
            out[f"success cue={cue} match={side}"] = float(np.mean(sel)) if sel else float("nan")
    for start in sorted({x for *_, x, _ in cases}):
        out[f"success start column {start}"] = float(np.mean([s for _, _, s, x, _ in cases if x == start]))
    out["saw the cue"] = float(np.mean([seen for *_, seen in cases]))
    f, lab = data["feats"], data["labels"]
    out["decisions"] = len(f)
    if len(f):
        width = agent.memory.output_size
        match = lab[:, 2] == 1
        out["P(forward) at match"] = float(lab[match, 3].mean()) if match.any() else float("nan")
        out["P(forward) at mismatch"] = float(lab[~match, 3].mean()) if (~match).any() else float("nan")
        for name, col in (("cue", 0), ("object in front", 1), ("match", 2)):
            out[f"probe {name} from memory"] = linear_probe(f[:, :width], lab[:, col])
            if args.head_size:
                out[f"probe {name} from head"] = linear_probe(f[:, width:], lab[:, col])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=20_000, help="first env seed (episode i uses seed + i)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = p.parse_args(argv)
    if not (a.run_dir / "checkpoint.pt").is_file():
        print(f"error: no checkpoint.pt in {a.run_dir}; pass a run directory written by train.py", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    args, agent = load_agent(a.run_dir)
    if not args.env_id.split(":")[-1].startswith("MiniGrid-Memory"):
        print(f"error: run {a.run_dir} trained on {args.env_id}; this probe needs a MiniGrid-Memory* env", file=sys.stderr)
        return 2
    out = report(args, agent, play(args, agent, a.episodes, a.seed))
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.run_dir} ({args.env_id}, {args.backbone}, head {args.head_size})")
        for k, v in out.items():
            print(f"  {k:34s} {v:.3f}" if isinstance(v, float) else f"  {k:34s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
