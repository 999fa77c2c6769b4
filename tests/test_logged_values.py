"""What a run logs, checked against counts made independently of the code that logs it: the README
promises `charts/accuracy` on NoisyRecall, `memory/*` backbone diagnostics, and a greedy evaluation
with --eval-episodes. Each test is a tiny train.train run (a few updates, seconds) read back with
TensorBoard's EventAccumulator."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
import memory
import train


def _args(tmp_path, name, **kw):
    return train.Args(**{
        "num_envs": 4, "num_steps": 16, "hidden_size": 16, "total_timesteps": 3 * 64, "runs_dir": str(tmp_path),
        "run_name": name, "progress": False, "checkpoint_every": 100, **kw,
    })


def _scalars(run) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


# ----------------------------------------------------------------------------- charts/accuracy


class _Recorder(gym.vector.VectorWrapper):
    """Passes everything through and keeps, per step, the observation each env acted on, the
    rewards, the done flags and the accuracy the env reported (None on steps without one)."""

    def __init__(self, env):
        super().__init__(env)
        self.obs, self.steps = None, []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.obs = np.array(obs)
        return obs, info

    def step(self, actions):
        obs, reward, term, trunc, info = self.env.step(actions)
        acc = info.get("accuracy")
        self.steps.append((self.obs, np.array(reward), np.array(term) | np.array(trunc), None if acc is None else np.array(acc)))
        self.obs = np.array(obs)
        return obs, reward, term, trunc, info


def _recorded_envs(monkeypatch) -> list:
    made = []
    make_vec = envs.make_vec

    def recording(*a, **k):
        made.append(_Recorder(make_vec(*a, **k)))
        return made[-1]

    monkeypatch.setattr(envs, "make_vec", recording)
    return made


def _episode_accuracies(steps, num_keys: int) -> list[tuple[int, int, float, float]]:
    """(step index, env, accuracy counted here, accuracy the env reported) for every episode that
    ended. Counted from what the agent saw, by the task's definition: a step is scored when its
    token is a key (< num_keys) already shown earlier in the episode; accuracy = reward / scored."""
    n_envs = len(steps[0][1])
    seen = [set() for _ in range(n_envs)]
    correct, scored = [0.0] * n_envs, [0] * n_envs
    out = []
    for i, (obs, reward, done, reported) in enumerate(steps):
        for n in range(n_envs):
            tok = int(obs[n])
            if tok < num_keys and tok in seen[n]:
                scored[n] += 1
                correct[n] += float(reward[n])
            else:
                assert reward[n] == 0, "an unscored step paid a reward"
            if tok < num_keys:
                seen[n].add(tok)
            if done[n]:
                out.append((i, n, correct[n] / scored[n], float(reported[n])))
                seen[n], correct[n], scored[n] = set(), 0.0, 0
    return out


def test_charts_accuracy_is_the_mean_accuracy_of_the_episodes_each_rollout_finished(tmp_path, monkeypatch):
    """NoisyRecall (7-step episodes, 2 per env per rollout): each update's charts/accuracy is the
    mean, over the episodes that ended in its rollout, of correct / scored predictions counted
    here from the observations and rewards (and equal, per episode, to the env's own count)."""
    made = _recorded_envs(monkeypatch)
    args = _args(tmp_path, "acc", vocab_size=8, noise_vocab_size=2, seq_len=8)
    run = train.train(args)
    rec = made[0]
    num_keys = (args.vocab_size - args.noise_vocab_size) // 2
    episodes = _episode_accuracies(rec.steps, num_keys)
    for _, _, ours, env_own in episodes:
        assert ours == pytest.approx(env_own, abs=1e-12)
    assert len({a for _, _, a, _ in episodes}) > 1, "the check needs episodes that differ"
    logged = _scalars(run)["charts/accuracy"]
    batch = args.num_envs * args.num_steps
    assert sorted(logged) == [batch * u for u in (1, 2, 3)]
    for u in (1, 2, 3):
        mine = [a for i, _, a, _ in episodes if (u - 1) * args.num_steps <= i < u * args.num_steps]
        assert len(mine) == 2 * args.num_envs
        assert logged[batch * u] == pytest.approx(np.mean(mine), rel=1e-6), u


# ----------------------------------------------------------------------------- memory/*


@pytest.mark.parametrize("backbone", memory.names())
def test_memory_diagnostics_logged_are_what_the_backbone_reports(tmp_path, monkeypatch, backbone):
    """After each update the run logs memory/<key> for exactly the keys the backbone's
    diagnostics() reports then, with its values. For mru, state_log_norm is recomputed here from
    the states of the backbone's last forward: the mean over (step, env, head) of log ||H_t||_F."""
    made, last = [], {}
    make = memory.make
    g = torch.Generator().manual_seed(0)

    def spied(*a, **k):
        m = make(*a, **k)
        with torch.no_grad():  # mru's projection starts at 0: its states would all be the identity
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        forward = m.forward

        def recording_forward(x, state, reset):
            if backbone == "mru":  # with the weights of this forward (an optimizer step follows)
                with torch.no_grad():
                    hs = m.states(x, state, reset)
                last["log_norm"] = torch.linalg.matrix_norm(hs.double()).log().mean().item()
            return forward(x, state, reset)

        m.forward = recording_forward
        made.append(m)
        return m

    monkeypatch.setattr(memory, "make", spied)
    reported, recomputed = {}, {}

    def on_update(u):
        (m,) = made
        reported[u] = dict(m.diagnostics())
        if backbone == "mru":
            recomputed[u] = last["log_norm"]
        return False

    args = _args(tmp_path, backbone, backbone=backbone)
    run = train.train(args, on_update=on_update)
    batch = args.num_envs * args.num_steps
    scalars = _scalars(run)
    logged = {tag[len("memory/"):]: v for tag, v in scalars.items() if tag.startswith("memory/")}
    assert set(logged) == set().union(*(r.keys() for r in reported.values()))
    for u, rep in reported.items():
        for key, value in rep.items():
            assert logged[key][batch * u] == pytest.approx(value, rel=1e-6, abs=1e-7), (key, u)
    if backbone == "mru":
        assert set(logged) == {"state_log_norm"}
        for u, value in recomputed.items():
            assert reported[u]["state_log_norm"] == pytest.approx(value, rel=1e-5), u
        # Not the identity's log sqrt(order) at every step: the states moved.
        assert max(abs(v - np.log(np.sqrt(8))) for v in recomputed.values()) > 0.01


# ----------------------------------------------------------------------------- --eval-episodes

GREEDY_ID = "memrl_test/ThreeArms-v0"


class ThreeArms(gym.Env):
    """Deterministic: 4 steps per episode; action a pays (1.0, 0.0, 0.25)[a] whatever the
    observation (which alternates 0, 1). A policy whose most likely action is 0 has greedy return 4."""

    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(3)
    PAY = (1.0, 0.0, 0.25)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        return self.t % 2, self.PAY[int(action)], self.t == 4, False, {}


if GREEDY_ID not in gym.envs.registry:
    gym.register(GREEDY_ID, entry_point=ThreeArms)


def test_greedy_evaluation_returns_the_greedy_policys_score(tmp_path, monkeypatch):
    """A hand-set policy -- logits (1, 0, 0.5) whatever the memory says, frozen so training cannot
    move it -- takes action 0 greedily (return 4 per episode) but samples it only half the time
    (expected return about 2.3). --eval-episodes reports 4 and logs it as eval/episodic_return."""
    from agents.actor_critic import ActorCritic

    init = ActorCritic.__init__

    def hand_set(self, *a, **k):
        init(self, *a, **k)
        with torch.no_grad():
            self.actor.weight.zero_()
            self.actor.bias.copy_(torch.tensor([1.0, 0.0, 0.5]))
        self.actor.requires_grad_(False)

    monkeypatch.setattr(ActorCritic, "__init__", hand_set)
    args = _args(tmp_path, "eval", env_id=GREEDY_ID, eval_episodes=6, num_steps=8)
    run = train.train(args)
    result = json.loads((run / "result.json").read_text())
    assert result["eval_episodes"] == 6
    assert result["eval_return"] == 4.0
    assert result["final_return"] < 3.5, "the sampled policy should fall short of the greedy one"
    scalars = _scalars(run)
    assert list(scalars["eval/episodic_return"].values()) == [4.0]
