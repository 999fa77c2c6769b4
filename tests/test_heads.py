"""Action heads (agents.distributions), every observation type (agents.encoders), observation and
reward normalization (agents.normalize), and runs on each: values checked by hand, PPO's loss on
each head against a hand-written one, resume bit-identical, a Box-action learning test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import memory
import train
from agents.actor_critic import ActorCritic
from agents.distributions import Categorical, DiagGaussian, MultiCategorical, make_distribution
from agents.encoders import make_encoder, obs_to_tensor
from agents.normalize import Normalizer, RunningMoments
from tests import tasks

# ----------------------------------------------------------------------------- the heads by hand


def test_categorical_log_prob_entropy_and_mode_by_hand():
    d = Categorical(3)
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]])  # p = (1, 2, 5) / 8
    logp, ent = d.evaluate(logits, torch.tensor([2]))
    assert logp.item() == pytest.approx(math.log(5 / 8), abs=1e-6)
    p = np.array([1, 2, 5]) / 8
    assert ent.item() == pytest.approx(-(p * np.log(p)).sum(), abs=1e-6)
    a, lp = d.act(logits, greedy=True)
    assert a.item() == 2 and lp.item() == pytest.approx(math.log(5 / 8), abs=1e-6)
    # Sampling follows the probabilities (Gumbel-max is exact).
    torch.manual_seed(0)
    a, lp = d.act(logits.expand(40_000, 3))
    freq = np.bincount(a.numpy(), minlength=3) / 40_000
    np.testing.assert_allclose(freq, p, atol=0.01)
    torch.testing.assert_close(lp, torch.log(torch.tensor(p, dtype=torch.float32))[a])
    assert Categorical(3, start=2).to_env(torch.tensor([0, 2])).tolist() == [2, 4]


def test_multi_categorical_sums_its_dimensions():
    d = MultiCategorical([2, 3], start=[0, 1])
    assert d.param_size == 5 and d.action_shape == (2,)
    params = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0, math.log(2.0)]])  # p0 = (1, 3)/4, p1 = (1, 1, 2)/4
    logp, ent = d.evaluate(params, torch.tensor([[1, 2]]))
    assert logp.item() == pytest.approx(math.log(3 / 4) + math.log(2 / 4), abs=1e-6)
    h = lambda p: -(np.array(p) * np.log(p)).sum()  # noqa: E731
    assert ent.item() == pytest.approx(h([0.25, 0.75]) + h([0.25, 0.25, 0.5]), abs=1e-6)
    a, lp = d.act(params, greedy=True)
    assert a.tolist() == [[1, 2]] and lp.item() == pytest.approx(logp.item(), abs=1e-6)
    assert d.to_env(a).tolist() == [[1, 3]]  # MultiDiscrete start offsets
    torch.manual_seed(0)
    a, _ = d.act(params.expand(40_000, 5))
    np.testing.assert_allclose(np.bincount(a[:, 0].numpy(), minlength=2) / 40_000, [0.25, 0.75], atol=0.01)
    np.testing.assert_allclose(np.bincount(a[:, 1].numpy(), minlength=3) / 40_000, [0.25, 0.25, 0.5], atol=0.01)


def test_diag_gaussian_log_prob_entropy_sample_and_clip_by_hand():
    d = DiagGaussian(np.array([-2.0, -1.0]), np.array([2.0, 1.0]))
    with torch.no_grad():
        d.log_std.copy_(torch.tensor([math.log(0.5), math.log(4.0)]))
    mean, a = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, -1.0]])
    logp, ent = d.evaluate(mean, a)
    # log N(1; 0, 0.5) + log N(-1; 1, 4), written out.
    want = (-0.5 * (1 / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
            - 0.5 * (2 / 4.0) ** 2 - math.log(4.0) - 0.5 * math.log(2 * math.pi))
    assert logp.item() == pytest.approx(want, abs=1e-5)
    assert ent.item() == pytest.approx(2 * (0.5 + 0.5 * math.log(2 * math.pi)) + math.log(0.5) + math.log(4.0), abs=1e-5)
    assert d.act(mean, greedy=True)[0].tolist() == mean.tolist()
    torch.manual_seed(0)
    with torch.no_grad():
        s, lp = d.act(mean.expand(50_000, 2))
        torch.testing.assert_close(lp, d.evaluate(mean.expand(50_000, 2), s)[0])
    np.testing.assert_allclose(s.mean(0).numpy(), [0.0, 1.0], atol=0.06)
    np.testing.assert_allclose(s.std(0).numpy(), [0.5, 4.0], rtol=0.02)
    # The sample is kept as drawn; the env gets it clipped to the bounds.
    assert d.to_env(torch.tensor([[3.0, -0.5], [-9.0, 4.0]])).tolist() == [[2.0, -0.5], [-2.0, 1.0]]
    # Gradients reach log_std through the log-probability and the entropy.
    (logp.sum() + ent.sum()).backward()
    assert d.log_std.grad is not None and torch.isfinite(d.log_std.grad).all()


@pytest.mark.parametrize("space,match", [
    (spaces.Box(-1, 1, (2, 2)), "must be one vector"),
    (spaces.Box(-np.inf, np.inf, (2,)), "finite bounds"),
    (spaces.MultiDiscrete([[2, 3], [2, 2]]), "nvec 1-D"),
    (spaces.Tuple((spaces.Discrete(2),)), "not supported; supported: Discrete, MultiDiscrete, Box"),
])
def test_unsupported_action_spaces_are_named(space, match):
    with pytest.raises(ValueError, match=match):
        make_distribution(space)


# ----------------------------------------------------------------------------- PPO on each head

HEADS = {
    "discrete": spaces.Discrete(3),
    "multidiscrete": spaces.MultiDiscrete([2, 4, 3]),
    "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
}


def _hand_log_prob_entropy(space, params, action, log_std=None):
    """Each head's log-probability and entropy from torch.distributions, written apart from
    agents.distributions."""
    D = torch.distributions
    if isinstance(space, spaces.Discrete):
        c = D.Categorical(logits=params)
        return c.log_prob(action), c.entropy()
    if isinstance(space, spaces.MultiDiscrete):
        cs = [D.Categorical(logits=p) for p in params.split(list(space.nvec), -1)]
        return (sum(c.log_prob(action[..., i]) for i, c in enumerate(cs)),
                sum(c.entropy() for c in cs))
    n = D.Normal(params, log_std.exp().expand_as(params))
    return n.log_prob(action).sum(-1), n.entropy().sum(-1)


@pytest.mark.parametrize("head", list(HEADS))
def test_ppo_update_gradient_equals_a_hand_written_loss_on_each_head(head):
    """One minibatch, one epoch: ppo_update's gradient equals the gradient of PPO's loss written
    from torch.distributions (ratio, clip on both sides, value loss, entropy bonus), with
    behaviour log-probabilities moved away from the current ones so the clip is active."""
    from agents.ppo import PPOConfig, ppo_update
    from agents.rollout import Rollout

    space = HEADS[head]
    torch.manual_seed(0)
    obs_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    agent = ActorCritic(obs_space, space, memory.make("gru", 8, 8), head_size=8)
    if head == "box":
        with torch.no_grad():
            agent.dist.log_std.copy_(torch.tensor([-0.3, 0.2]))
    T, N = 6, 2
    obs = torch.rand(T, N, 3) * 2 - 1
    reset = torch.zeros(T, N, dtype=torch.bool)
    reset[0] = True
    state = agent.initial_state(N)
    with torch.no_grad():
        params, values, _ = agent.forward_sequence(obs, state, reset)
        actions, logp = agent.dist.act(params.reshape(T * N, -1))
    actions = actions.reshape(T, N, *agent.dist.action_shape)
    old_logp = logp.reshape(T, N) + 0.3 * torch.randn(T, N)  # the clip band is left in both directions
    rewards = torch.randn(T, N)
    false = torch.zeros(T, N, dtype=torch.bool)
    ro = Rollout(obs, reset, actions, old_logp, values, rewards, false, false, torch.ones(T, N, dtype=torch.bool),
                 torch.cat([values[1:], torch.zeros(1, N)]), tuple(s[None] for s in state))
    cfg = PPOConfig(update_epochs=1, num_minibatches=1, norm_adv=False, ent_coef=0.05, clip_vloss=False)

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            self.grads = [p.grad.clone() for p in agent.parameters()]

    opt = Capture(agent.parameters(), lr=0.0)
    from agents.ppo import compute_gae

    ppo_update(agent, opt, ro, cfg, T)
    got = opt.grads

    agent.zero_grad()
    adv, ret = compute_gae(rewards, values, ro.next_values, false, false, ro.valid, cfg.gamma, cfg.gae_lambda)
    new_params, new_v, _ = agent.forward_sequence(obs, state, reset)
    new_logp, ent = _hand_log_prob_entropy(space, new_params, actions, getattr(agent.dist, "log_std", None))
    ratio = (new_logp - old_logp).exp()
    assert ((ratio > 1.2) | (ratio < 0.8)).any() and ((ratio < 1.2) & (ratio > 0.8)).any()
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    loss = pg - 0.05 * ent.mean() + 0.5 * 0.5 * ((new_v - ret) ** 2).mean()
    loss.backward()
    want = [p.grad for p in agent.parameters()]
    clip = torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)  # ppo_update clips
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert clip > 0


# ----------------------------------------------------------------------------- observations


def test_tuple_and_nested_observations_encode_each_part_by_its_rule():
    space = spaces.Tuple((
        spaces.Discrete(3),
        spaces.Dict({"b": spaces.Box(0, 255, (2,), np.uint8), "a": spaces.MultiDiscrete([2, 2])}),
        spaces.Tuple((spaces.MultiBinary(2), spaces.Box(-1.0, 1.0, (1,), np.float32))),
    ))
    enc = make_encoder(space)
    assert enc.size == 3 + (4 + 2) + (2 + 1)
    obs = (np.array([2]), {"b": np.array([[255, 0]], np.uint8), "a": np.array([[1, 0]])},
           (np.array([[1, 0]], np.int8), np.array([[-0.5]], np.float32)))
    x = enc(obs_to_tensor(obs, torch.device("cpu")))
    # Discrete one-hot | Dict in key order: a (two one-hots), b (uint8 / 255) | Tuple: MultiBinary, Box.
    assert x.tolist() == [[0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, -0.5]]


def test_a_tuple_observation_env_trains_and_resumes_bit_identically(tmp_path):
    """POPGym's Autoencode observes Tuple(Discrete, Discrete)."""
    pytest.importorskip("popgym")
    _resume_equals_uninterrupted(tmp_path, env_id="popgym-AutoencodeEasy-v0")


# ----------------------------------------------------------------------------- normalization


def test_running_moments_equal_the_moments_of_everything_seen():
    rng = np.random.default_rng(0)
    m = RunningMoments((3,), torch.device("cpu"))
    xs = [rng.normal(2.0, 3.0, (n, 3)) for n in (1, 7, 50, 3)]
    for x in xs:
        m.update(torch.as_tensor(x))
    allx = np.concatenate(xs)
    np.testing.assert_allclose(m.mean.numpy(), allx.mean(0), rtol=1e-5)
    np.testing.assert_allclose(m.var.numpy(), allx.var(0), rtol=1e-4)


def test_normalizer_by_hand():
    n = Normalizer.create((1,), 2, 0.5, True, torch.device("cpu"))
    o = n.obs(torch.tensor([[1.0], [3.0]]))
    # After one batch (1, 3): mean 2 (count 1e-4 + 2), var 1: obs -> -1, +1.
    torch.testing.assert_close(o, torch.tensor([[-1.0], [1.0]]), atol=1e-3, rtol=0)
    assert n.obs(torch.tensor([[1e6], [-1e6]]), update=False).abs().max() == 10.0  # clipped
    r1 = n.reward(torch.tensor([1.0, 2.0]), torch.tensor([False, True]))
    # G = (1, 2): its running var (count 1e-4 + 2, mean ~1.5) is ~0.25: rewards / sqrt(0.25)
    torch.testing.assert_close(r1, torch.tensor([2.0, 4.0]), atol=1e-2, rtol=0)
    assert n.returns.tolist() == [1.0, 0.0]  # env 1's episode ended: its return restarts
    frozen = n.frozen_obs()
    before = n.obs_rms.mean.clone()
    frozen.obs(torch.tensor([[100.0], [100.0]]))
    assert torch.equal(n.obs_rms.mean, before)


def test_norm_obs_needs_a_float_box(tmp_path, capsys):
    code = train.main(["--env-id", "MiniGrid-MemoryS7-v0", "--norm-obs", "--runs-dir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--norm-obs normalizes a float Box observation" in err[0]
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- runs on each head


def _args(tmp_path, name, **kw):
    return train.Args(**{
        "total_timesteps": 6 * 64, "num_envs": 4, "num_steps": 16, "hidden_size": 16, "preset": "none",
        "runs_dir": str(tmp_path), "run_name": name, "progress": False, "checkpoint_every": 100, **kw,
    })


def _resume_equals_uninterrupted(tmp_path, **kw):
    full = train.train(_args(tmp_path, "full", **kw))
    part = train.train(_args(tmp_path, "part", **kw), on_update=lambda u: u == 3)
    resumed = train.train(train.Args(resume=str(part), progress=False))
    a = torch.load(Path(full) / "checkpoint.pt", weights_only=False)
    b = torch.load(Path(resumed) / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    return a, b


@pytest.mark.parametrize("async_rollouts", [False, True])
def test_box_actions_with_normalization_resume_bit_identically(tmp_path, async_rollouts):
    """A Box-action run with --norm-obs and --norm-reward, interrupted and resumed, ends with the
    parameters and normalization statistics of the uninterrupted run (sync and async)."""
    a, b = _resume_equals_uninterrupted(tmp_path, env_id=tasks.CUE_RECALL_BOX_ID if not async_rollouts
                                        else f"tests.tasks:{tasks.CUE_RECALL_BOX_ID}",
                                        norm_obs=True, norm_reward=True, async_rollouts=async_rollouts, eval_episodes=2)
    from agents.rollout import normalizer_state

    na, nb = normalizer_state(a), normalizer_state(b)
    assert na is not None and na["obs"]["count"] > 6 * 64  # every observation counted (and the resets)
    for part in ("obs", "ret"):
        for k in na[part]:
            torch.testing.assert_close(na[part][k], nb[part][k], rtol=0, atol=0)
    assert "dist.log_std" in a["model"]


def test_multidiscrete_actions_resume_bit_identically(tmp_path):
    pytest.importorskip("popgym")
    _resume_equals_uninterrupted(tmp_path, env_id="popgym-BattleshipEasy-v0", backbone="gru")


@pytest.mark.slow
def test_box_head_learns_a_memory_task_that_mlp_cannot(tmp_path):
    """CueRecallBox: remembering the cue earns 1, any memoryless answer 0 in expectation."""
    def final(backbone):
        args = train.Args(backbone=backbone, env_id=tasks.CUE_RECALL_BOX_ID, total_timesteps=24_576, num_envs=16,
                          num_steps=32, hidden_size=32, learning_rate=3e-3, num_minibatches=2, ent_coef=0.0,
                          preset="none", runs_dir=str(tmp_path), progress=False)
        return json.loads((train.train(args) / "result.json").read_text())["final_return"]

    assert final("lstm") >= 0.8
    assert final("mlp") <= 0.3
