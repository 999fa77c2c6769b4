"""PPO pieces: GAE against hand-computed cases, the rollout's autoreset handling in both of
gymnasium's modes, sequence batching, the loss terms' values and gradients by hand, the update's
gradient against a hand-written loss, and the non-finite guard."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.distributions import Categorical
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import memory
from agents.actor_critic import ActorCritic
from agents.ppo import (
    NonFiniteError, PPOConfig, clipped_surrogate, compute_gae, masked_mean, normalize_advantages, policy_entropy,
    ppo_loss, ppo_update, to_sequences, value_loss,
)
from agents.rollout import RolloutCollector


# ----------------------------------------------------------------------------- GAE by hand


def _gae_by_hand(r, v, nv, term, done, valid, g, lam):
    T = len(r)
    adv = [0.0] * T
    nxt = 0.0
    for t in reversed(range(T)):
        delta = r[t] + g * nv[t] * (0.0 if term[t] else 1.0) - v[t]
        nxt = delta + g * lam * (0.0 if done[t] else 1.0) * nxt
        adv[t] = nxt if valid[t] else 0.0
    return adv


def test_gae_termination_truncation_and_invalid_steps():
    g, lam = 0.9, 0.8
    # One env, 7 steps: episode A ends by termination at t=2; step 3 is NEXT_STEP's invalid reset
    # step; episode B is truncated at t=5 (bootstrap from V(final obs) = next_value[5]).
    r = [0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.25]
    v = [0.1, 0.2, 0.3, 9.0, 0.4, 0.5, 0.6]
    nv = [0.2, 0.3, 9.0, 0.4, 0.5, 7.0, 0.8]  # next_value[2] is junk: termination must ignore it
    term = [False, False, True, False, False, False, False]
    trunc = [False, False, False, False, False, True, False]
    done = [a or b for a, b in zip(term, trunc)]
    valid = [True, True, True, False, True, True, True]
    T = lambda x, dt=torch.float64: torch.tensor(x, dtype=dt)[:, None]  # noqa: E731
    adv, ret = compute_gae(T(r), T(v), T(nv), T(term, torch.bool), T(done, torch.bool), T(valid, torch.bool), g, lam)
    expect = _gae_by_hand(r, v, nv, term, done, valid, g, lam)
    torch.testing.assert_close(adv[:, 0], torch.tensor(expect, dtype=torch.float64))
    # Spot checks that do not rely on the helper above:
    assert adv[2, 0].item() == pytest.approx(1.0 - 0.3)  # terminal: no bootstrap
    assert adv[5, 0].item() == pytest.approx(0.0 + g * 7.0 - 0.5)  # truncated: bootstrap, no carry
    assert adv[3, 0].item() == 0.0  # invalid step
    a4 = 0.5 + g * 0.5 - 0.4 + g * lam * adv[5, 0].item()
    assert adv[4, 0].item() == pytest.approx(a4)
    torch.testing.assert_close(ret, adv + T(v))


def test_to_sequences_orders_chunks_like_start_states():
    T, N, L = 8, 3, 4
    x = torch.arange(T * N).view(T, N)  # x[t, n] = t * N + n
    s = to_sequences(x, L)
    assert s.shape == (L, 2 * N)
    for k in range(2):
        for n in range(N):
            assert s[:, k * N + n].tolist() == [(k * L + i) * N + n for i in range(L)]


# ----------------------------------------------------------------------------- the loss terms by hand
# Each term of ppo_update's loss on hand-made numbers: its value and its gradient, worked out on
# paper (docs/design.md, section 7). Float64, one row per case; mask 0 marks an invalid step.


def _value_and_grad(f, x):
    x = x.clone().requires_grad_(True)
    y = f(x)
    (g,) = torch.autograd.grad(y, x)
    return y.item(), g


def _columns(rows):
    return [torch.tensor(c, dtype=torch.float64) for c in zip(*rows)]


def test_clipped_surrogate_by_hand():
    """Past the band in the direction the advantage favours (r > 1 + eps with A > 0, r < 1 - eps
    with A < 0) the term is the clipped one and has no gradient; past it the other way the
    pessimistic bound keeps the unclipped term; inside the band the term is -A r. The loss is
    minimized, so d loss / d r = -A / count wherever a gradient flows (the objective's is +A)."""
    eps = 0.2
    rows = [  # ratio, advantage, mask, term = max(-A r, -A clip(r)), d term / d r
        (1.5, 2.0, 1.0, -2.0 * 1.2, 0.0),
        (0.5, -1.0, 1.0, 1.0 * 0.8, 0.0),
        (1.5, -1.0, 1.0, 1.0 * 1.5, 1.0),
        (0.5, 2.0, 1.0, -2.0 * 0.5, -2.0),
        (1.1, 3.0, 1.0, -3.0 * 1.1, -3.0),
        (0.9, -2.0, 1.0, 2.0 * 0.9, 2.0),
        (1.5, 5.0, 0.0, 0.0, 0.0),  # invalid: counts for nothing
    ]
    ratio, adv, mask, term, dterm = _columns(rows)
    count = mask.sum()
    assert count == 6
    loss, grad = _value_and_grad(lambda r: clipped_surrogate(r, adv, eps, mask, count), ratio)
    assert loss == pytest.approx((-2.4 + 0.8 + 1.5 - 1.0 - 3.3 + 1.8) / 6)
    torch.testing.assert_close(grad, dterm / 6)
    # The same on a [T, B] batch (as ppo_update calls it): two copies of each step, count 12.
    col = lambda x: x.view(7, 1).expand(7, 2).contiguous()  # noqa: E731
    loss2, grad2 = _value_and_grad(lambda r: clipped_surrogate(r, col(adv), eps, col(mask), 2 * count), col(ratio))
    assert loss2 == pytest.approx(loss)
    torch.testing.assert_close(grad2, col(dterm / 12))


def test_value_loss_clipped_and_unclipped_by_hand():
    """0.5 * mean (V - R)^2, and the clipped form 0.5 * mean max((V - R)^2, (V_clip - R)^2) with
    V_clip = V_old + clip(V - V_old, -eps, eps): where the clipped term is the larger it has no
    gradient in V (V moved more than eps from V_old); elsewhere d / dV = (V - R) / count."""
    eps = 0.2
    rows = [  # V, V_old, R, mask, (V - R)^2, clipped term, d clipped term / dV   (V_clip in the comment)
        (1.0, 0.5, 2.0, 1.0, 1.0, 1.69, 0.0),  # V_clip 0.7: further from R, the clipped term wins
        (1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 2.0),  # V_clip 0.7: nearer to R, the unclipped term wins
        (0.6, 0.5, 2.0, 1.0, 1.96, 1.96, -2.8),  # inside the band: V_clip = V
        (-0.5, 0.5, -1.0, 1.0, 0.25, 1.69, 0.0),  # V_clip 0.3: the clipped term wins
        (-0.5, 0.5, 1.0, 1.0, 2.25, 2.25, -3.0),  # V_clip 0.3: the unclipped term wins
        (3.0, 0.0, 0.0, 0.0, 9.0, 9.0, 6.0),  # invalid
    ]
    new, old, ret, mask, sq, clipped_term, dclipped = _columns(rows)
    count = mask.sum()
    assert count == 5
    loss, grad = _value_and_grad(lambda v: value_loss(v, old, ret, eps, False, mask, count), new)
    assert loss == pytest.approx(0.5 * (1.0 + 1.0 + 1.96 + 0.25 + 2.25) / 5)
    torch.testing.assert_close(grad, (new - ret) * mask / 5)
    loss, grad = _value_and_grad(lambda v: value_loss(v, old, ret, eps, True, mask, count), new)
    assert loss == pytest.approx(0.5 * (1.69 + 1.0 + 1.96 + 1.69 + 2.25) / 5)
    torch.testing.assert_close(grad, 0.5 * dclipped * mask / 5)


def test_normalize_advantages_by_hand():
    """Mean and (biased) standard deviation over the valid steps only: invalid steps neither shift
    nor scale the valid ones."""
    adv = torch.tensor([[1.0, 2.0], [3.0, 6.0], [100.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    count = mask.sum()
    out = normalize_advantages(adv, mask, count)
    # mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
    torch.testing.assert_close(out[:2], (adv[:2] - 3.0) / 3.5**0.5)
    assert masked_mean(out, mask, count).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_mean(out**2, mask, count).item() == pytest.approx(1.0)


def test_policy_entropy_and_total_loss_by_hand():
    """The entropy of a categorical from its log-probabilities; the total is policy loss
    - ent_coef * entropy + vf_coef * value loss (the entropy a bonus: d total / d entropy = -ent_coef)."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    ent = policy_entropy(torch.log_softmax(logits, -1))
    p = [np.exp(x) for x in (2.0, 0.0, 0.0, -1.0)]
    p = [x / sum(p) for x in p]
    assert ent[0].item() == pytest.approx(np.log(4.0))
    assert ent[1].item() == pytest.approx(-sum(x * np.log(x) for x in p))
    pg, v, e = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (0.3, 2.0, 1.2))
    total = ppo_loss(pg, v, e, 0.01, 0.5)
    assert total.item() == pytest.approx(0.3 - 0.01 * 1.2 + 0.5 * 2.0)
    assert [g.item() for g in torch.autograd.grad(total, (pg, v, e))] == pytest.approx([1.0, 0.5, -0.01])


# ----------------------------------------------------------------------------- autoreset handling


class ScriptedEnv(gym.Env):
    """obs = [episode id, step in episode]; episodes alternate between terminating after 3 steps
    and being truncated after 4; reward = 1 + step."""

    observation_space = spaces.Box(0, 1000, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.episode = 0
        else:
            self.episode += 1
        self.t = 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.episode, self.t], np.float32)
        term = self.episode % 2 == 0 and self.t == 3
        trunc = self.episode % 2 == 1 and self.t == 4
        return obs, float(self.t), term, trunc, {}


class CountingAgent:
    """State = steps since reset; value = 100 * episode id + 10 * step + steps since reset, so a
    wrong reset or a wrong bootstrap shows in the value."""

    dist = Categorical(2)

    def initial_state(self, n, device=None):
        return (torch.zeros(n, 1, device=device),)

    def step(self, obs, state, reset):
        count = torch.where(reset[:, None], torch.zeros_like(state[0]), state[0]) + 1
        value = 100 * obs[:, 0] + 10 * obs[:, 1] + count[:, 0]
        logits = torch.zeros(obs.shape[0], 2)
        return logits, value, (count,)


def _collect(mode, T=20):
    env = SyncVectorEnv([ScriptedEnv] * 2, autoreset_mode=mode)
    agent = CountingAgent()
    c = RolloutCollector(env, agent, T, T, torch.device("cpu"), seed=0)
    return c.collect(agent)


def test_next_step_mode_masks_reset_step_and_bootstraps_from_final_obs():
    ro, _ = _collect(AutoresetMode.NEXT_STEP)
    obs = ro.obs[:, 0]
    # Episode 0: steps 0,1,2 (terminates at t=2); t=3 acts on the final obs (invalid);
    # episode 1 starts at t=4 with a reset; truncated at t=7; t=8 invalid; episode 2 from t=9.
    assert ro.valid[:, 0].tolist()[:10] == [True, True, True, False, True, True, True, True, False, True]
    assert ro.reset[:, 0].tolist()[:10] == [True, False, False, False, True, False, False, False, False, True]
    assert obs[3].tolist() == [0, 3]  # the invalid step sees episode 0's final observation
    assert ro.terminated[2, 0] and ro.dones[2, 0] and not ro.terminated[7, 0] and ro.dones[7, 0]
    # Truncation bootstrap: V(final obs [1, 4]) with the pre-reset state (5 steps since reset).
    assert ro.next_values[7, 0].item() == 100 * 1 + 10 * 4 + 5
    assert ro.rewards[3, 0] == 0 and ro.rewards[8, 0] == 0


def test_same_step_mode_resets_at_once_and_bootstraps_from_final_obs():
    ro, stats = _collect(AutoresetMode.SAME_STEP)
    assert ro.valid.all()
    # Episode 0: t=0,1,2; episode 1: t=3..6 (truncated at 6); episode 2 from t=7.
    assert ro.reset[:, 0].tolist()[:8] == [True, False, False, True, False, False, False, True]
    assert ro.obs[3, 0].tolist() == [1, 0]
    assert ro.next_values[6, 0].item() == 100 * 1 + 10 * 4 + 5
    env0 = [i for i, e in enumerate(stats.env_ids) if e == 0]
    assert [stats.returns[i] for i in env0[:2]] == [1 + 2 + 3, 1 + 2 + 3 + 4]
    assert [stats.lengths[i] for i in env0[:2]] == [3, 4]


def test_both_modes_give_the_same_valid_transitions():
    a, _ = _collect(AutoresetMode.NEXT_STEP, T=40)
    b, _ = _collect(AutoresetMode.SAME_STEP, T=40)
    va = a.valid[:, 0]
    n = int(b.valid.shape[0] - 10)
    for field in ("rewards", "terminated", "dones", "next_values", "values"):
        x, y = getattr(a, field)[:, 0][va][:n], getattr(b, field)[:, 0][:n]
        if field == "next_values":  # after a termination the next value is unused (and differs)
            keep = ~b.terminated[:n, 0]
            x, y = x[keep], y[keep]
        torch.testing.assert_close(x.double(), y.double(), msg=field)
    torch.testing.assert_close(a.obs[:, 0][va][:n], b.obs[:, 0][:n])


def test_bptt_start_states_are_stored_per_chunk():
    env = SyncVectorEnv([ScriptedEnv] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    agent = CountingAgent()
    c = RolloutCollector(env, agent, 12, 4, torch.device("cpu"), seed=0)
    ro, _ = c.collect(agent)
    (s,) = ro.start_states
    assert s.shape == (3, 2, 1)
    # Steps since reset at t = 4 and t = 8: episode 1 started at t=3, episode 2 at t=7.
    assert s[1, 0, 0].item() == 1 and s[2, 0, 0].item() == 1


# ----------------------------------------------------------------------------- the update


def _tiny_agent_and_rollout():
    torch.manual_seed(0)
    env = SyncVectorEnv([ScriptedEnv] * 4, autoreset_mode=AutoresetMode.NEXT_STEP)
    agent = ActorCritic(env.single_observation_space, 2, memory.make("lstm", 8, 8))
    c = RolloutCollector(env, agent, 16, 8, torch.device("cpu"), seed=0)
    return agent, c.collect(agent)[0]


def test_update_changes_weights_and_reports_cleanrl_stats():
    agent, ro = _tiny_agent_and_rollout()
    before = [p.detach().clone() for p in agent.parameters()]
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    stats = ppo_update(agent, opt, ro, PPOConfig(num_minibatches=2, update_epochs=2), bptt_len=8)
    for k in ("losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"):
        assert k in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))


def test_update_stops_on_non_finite_loss_without_touching_weights():
    agent, ro = _tiny_agent_and_rollout()
    ro.rewards[3, 1] = float("nan")
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteError, match="non-finite rewards in the rollout of update 7"):
        ppo_update(agent, opt, ro, PPOConfig(), bptt_len=8, update_index=7)
    for k, v in agent.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_update_stops_on_non_finite_loss_midway():
    """Weights that went bad make the loss non-finite: the bad step never reaches the optimizer."""
    agent, ro = _tiny_agent_and_rollout()
    with torch.no_grad():
        agent.actor.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteError, match=r"non-finite policy_loss \(nan\) in update 3, epoch 0"):
        ppo_update(agent, opt, ro, PPOConfig(), bptt_len=8, update_index=3)
    for k, v in agent.state_dict().items():
        assert torch.equal(v.nan_to_num(), before[k].nan_to_num()), k


def test_update_stops_on_non_finite_gradient():
    agent, ro = _tiny_agent_and_rollout()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    hook = agent.critic.weight.register_hook(lambda g: g * float("inf"))
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteError, match="non-finite gradient"):
        ppo_update(agent, opt, ro, PPOConfig(), bptt_len=8)
    hook.remove()
    for k, v in agent.state_dict().items():
        assert torch.equal(v, before[k]), k


class _GradRecorder(torch.optim.SGD):
    """An optimizer with learning rate 0 that keeps the gradient ppo_update hands to each step."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    @torch.no_grad()
    def step(self, closure=None):
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]])


def _chunked_forward(agent, ro, L):
    """The rollout's logits and values, each BPTT chunk of L steps run from its stored start state
    (written out here without ppo_update's sequence helpers)."""
    T = ro.reset.shape[0]
    logits, values = [], []
    for k in range(T // L):
        lg, v, _ = agent.forward_sequence(ro.obs[k * L : (k + 1) * L], tuple(s[k] for s in ro.start_states), ro.reset[k * L : (k + 1) * L])
        logits.append(lg)
        values.append(v)
    return torch.cat(logits), torch.cat(values)


def _hand_made_rollout(agent, ro, L):
    """The rollout with hand-set old log-probabilities, old values, rewards and bootstrap values:
    ratios spread over [0.55, 1.8] (every side of the clip band) and old values up to 0.5 from the
    new ones (both sides of the value clip)."""
    import dataclasses

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        logits, values = _chunked_forward(agent, ro, L)
    logp = torch.log_softmax(logits, -1).gather(-1, ro.actions[..., None]).squeeze(-1)
    shape = ro.rewards.shape
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(shape, generator=g)  # noqa: E731
    return dataclasses.replace(
        ro, logprobs=logp - u(-0.6, 0.6), values=values + u(-0.5, 0.5),
        rewards=torch.randn(shape, generator=g) * ro.valid, next_values=torch.randn(shape, generator=g),
    )


@pytest.mark.parametrize("norm_adv", [True, False], ids=["norm_adv", "raw_adv"])
@pytest.mark.parametrize("clip_vloss", [True, False], ids=["clip_vloss", "plain_vloss"])
def test_update_follows_the_gradient_of_the_loss_written_by_hand(norm_adv, clip_vloss):
    """ppo_update's gradient (one minibatch, one epoch, no gradient clipping) equals the gradient of
    PPO's loss written out here from its definition (the paper's min form of the surrogate, the
    clipped value loss, the entropy bonus) on a rollout whose ratios and old values cover every
    side of both clips. Its reported losses are that loss's terms."""
    agent, ro = _tiny_agent_and_rollout()
    L, eps, ent_coef, vf_coef = 8, 0.2, 0.05, 0.5
    ro = _hand_made_rollout(agent, ro, L)
    cfg = PPOConfig(num_minibatches=1, update_epochs=1, norm_adv=norm_adv, clip_vloss=clip_vloss, clip_coef=eps,
                    ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=1e9)

    adv, ret = compute_gae(ro.rewards, ro.values, ro.next_values, ro.terminated, ro.dones, ro.valid, cfg.gamma, cfg.gae_lambda)
    logits, new_v = _chunked_forward(agent, ro, L)
    v = ro.valid
    logp_all = torch.log_softmax(logits, -1)
    ratio = (logp_all.gather(-1, ro.actions[..., None]).squeeze(-1) - ro.logprobs).exp()[v]
    a = adv[v]
    if norm_adv:
        a = (a - a.mean()) / a.std(unbiased=False)
    # Every case of the clipped surrogate occurs: both sides of the band, with each sign of A.
    for side in (ratio > 1 + eps, ratio < 1 - eps):
        assert (side & (a > 0)).any() and (side & (a < 0)).any()
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a).mean()
    V, V_old, R = new_v[v], ro.values[v], ret[v]
    if clip_vloss:
        V_clip = V_old + (V - V_old).clamp(-eps, eps)
        assert ((V - V_old > eps) & ((V_clip - R) ** 2 > (V - R) ** 2)).any()
        assert ((V - V_old < -eps) & ((V_clip - R) ** 2 > (V - R) ** 2)).any()
        vl = 0.5 * torch.maximum((V - R) ** 2, (V_clip - R) ** 2).mean()
    else:
        vl = 0.5 * ((V - R) ** 2).mean()
    ent = torch.distributions.Categorical(logits=logits[v]).entropy().mean()
    loss = pg - ent_coef * ent + vf_coef * vl
    params = list(agent.parameters())
    expect = torch.autograd.grad(loss, params, allow_unused=True)

    opt = _GradRecorder(params)
    stats = ppo_update(agent, opt, ro, cfg, bptt_len=L)
    (got,) = opt.grads
    for (name, _), g, e in zip(agent.named_parameters(), got, expect):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e, rtol=1e-4, atol=1e-6, msg=name)
    assert stats["losses/policy_loss"] == pytest.approx(pg.item(), rel=1e-4, abs=1e-6)
    assert stats["losses/value_loss"] == pytest.approx(vl.item(), rel=1e-4)
    assert stats["losses/entropy"] == pytest.approx(ent.item(), rel=1e-4)


def _zero_value_rollout(ro, rewards):
    """The rollout with these rewards and all values (and bootstrap values) 0: advantages are then
    linear in the rewards."""
    import dataclasses

    z = torch.zeros_like(ro.values)
    return dataclasses.replace(ro, rewards=rewards * ro.valid, values=z, next_values=z)


def _sgd_update(norm_adv, scale):
    agent, ro = _tiny_agent_and_rollout()
    rewards = torch.randn(ro.rewards.shape, generator=torch.Generator().manual_seed(3))
    ro = _zero_value_rollout(ro, scale * rewards)
    before = [p.detach().clone() for p in agent.parameters()]
    # Plain SGD and no gradient clipping: Adam's step and the clip would hide a scaled gradient.
    opt = torch.optim.SGD(agent.parameters(), lr=0.05)
    cfg = PPOConfig(num_minibatches=2, update_epochs=2, norm_adv=norm_adv, vf_coef=0.0, max_grad_norm=1e9)
    torch.manual_seed(1)  # the same minibatches for every call
    ppo_update(agent, opt, ro, cfg, bptt_len=8)
    return [p.detach() - b for p, b in zip(agent.parameters(), before)]


def test_advantage_normalization_makes_the_update_invariant_to_reward_scale():
    """With norm_adv the advantages are standardized per minibatch: rewards x 8 (values 0, so the
    advantages scale with them) leave the update unchanged. Without it the same scaling changes
    the update (the control: the test can tell the two apart)."""
    base, scaled = _sgd_update(True, 1.0), _sgd_update(True, 8.0)
    assert max(d.abs().max().item() for d in base) > 1e-3, "the update should move the weights"
    for a, b in zip(base, scaled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    base, scaled = _sgd_update(False, 1.0), _sgd_update(False, 8.0)
    assert max((a - b).abs().max().item() for a, b in zip(base, scaled)) > 1e-2


def _entropy_after_update(ent_coef):
    agent, ro = _tiny_agent_and_rollout()
    with torch.no_grad():  # a peaked policy (entropy well below log 2) that has room to spread
        agent.actor.bias.copy_(torch.tensor([2.0, -2.0]))
    ro = _zero_value_rollout(ro, torch.zeros_like(ro.rewards))  # every advantage 0
    cfg = PPOConfig(num_minibatches=2, update_epochs=2, ent_coef=ent_coef, vf_coef=0.0)

    def entropy():
        with torch.no_grad():
            logits, _ = _chunked_forward(agent, ro, 8)
        return torch.distributions.Categorical(logits=logits[ro.valid]).entropy().mean().item()

    before = entropy()
    ppo_update(agent, torch.optim.Adam(agent.parameters(), lr=0.05), ro, cfg, bptt_len=8)
    return before, entropy()


def test_entropy_bonus_raises_the_entropy_of_a_policy_with_zero_advantages():
    """With every advantage 0 and no value loss, the only gradient is the entropy bonus's: a positive
    ent_coef makes the policy more random, a negative one less, and 0 leaves it alone."""
    before, after = _entropy_after_update(0.1)
    assert before < 0.5 and after > before + 0.05, (before, after)
    before, after = _entropy_after_update(-0.1)
    assert after < before - 0.05, (before, after)
    before, after = _entropy_after_update(0.0)
    assert after == before


def _time_slice(obs, steps):
    if isinstance(obs, dict):
        return {k: _time_slice(v, steps) for k, v in obs.items()}
    return obs[steps]


@pytest.mark.parametrize("backbone", memory.names())
def test_update_recomputes_exactly_what_acting_computed(backbone):
    """On MiniGrid Memory (SAME_STEP autoreset, short and long episodes, a rollout that starts
    from the previous one's carried state), the update's view of the rollout -- BPTT chunks from
    their stored start states, minibatch by minibatch as ppo_update builds them -- gives the same
    log-probabilities and values as acting did, and each stored start state is where the chunk
    before it ended. A reset applied one step late, a start state stored after the chunk's first
    step or taken from the wrong chunk or env, or a state not carried between rollouts all break
    this."""
    import envs
    from agents.ppo import index_sequences, sequence_inputs

    torch.manual_seed(0)
    env = envs.make_vec("MiniGrid-MemoryS7-v0", 6, seed=0, view_size=3, movement_only=True)
    agent = ActorCritic(env.single_observation_space, 3, memory.make(backbone, 16, 16), head_size=8)
    # Random (non-default) memory weights, as in tests/test_memory_contract.py: mru's projection
    # starts at zero, so its state would never leave the identity and a misplaced start state
    # would go unseen. Small (0.01): mru's state is a product of matrices and grows fast.
    g = torch.Generator().manual_seed(1)  # its own stream: acting samples as it always did
    with torch.no_grad():
        for p in agent.memory.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    L = 8
    collector = RolloutCollector(env, agent, 48, L, torch.device("cpu"), seed=0)
    end = agent.initial_state(6)  # the state the chunk before the next one ended in
    for _ in range(2):
        ro, _ = collector.collect(agent)
        assert ro.reset[1:].any(), "the rollout should contain episode starts"
        # Not vacuous: the states move and the value depends on the input (mlp has no state).
        for s, s0 in zip(ro.start_states, agent.initial_state(6)):
            # (by far more than float rounding; ssm's small initial step sizes move it ~0.01)
            assert (s - s0.to(s.dtype)).abs().amax() > 1e-3, "the memory state should move"
        assert ro.values.std() > 1e-3, "the value should depend on the input"
        # Chunk k starts where chunk k - 1, run from its own stored start state, ended (the first
        # chunk where the previous rollout ended; the initial state for the first rollout).
        for k in range(ro.reset.shape[0] // L):
            for s, e in zip(ro.start_states, end):
                torch.testing.assert_close(s[k], e.to(s.dtype), atol=1e-4, rtol=1e-4)
            steps = slice(k * L, (k + 1) * L)
            with torch.no_grad():
                _, _, end = agent.forward_sequence(_time_slice(ro.obs, steps), tuple(s[k] for s in ro.start_states), ro.reset[steps])
        obs, start = sequence_inputs(ro, L)
        reset, actions, logp, values = (to_sequences(x, L) for x in (ro.reset, ro.actions, ro.logprobs, ro.values))
        for mb in torch.randperm(reset.shape[1]).tensor_split(3):
            with torch.no_grad():
                logits, v, _ = agent.forward_sequence(index_sequences(obs, mb), tuple(s[mb] for s in start), reset[:, mb])
            new_logp = torch.log_softmax(logits, -1).gather(-1, actions[:, mb, None]).squeeze(-1)
            # float32 paths differ (recurrent step vs chunkwise, Newton-Schulz): ~1e-5 apart.
            torch.testing.assert_close(new_logp, logp[:, mb], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v, values[:, mb], atol=1e-4, rtol=1e-4)


def test_branches_relu_memory_and_actor_gain():
    """branch_size gives policy and value their own Linear+ReLU layer after the shared head;
    relu_memory applies a ReLU to the memory output before the head; actor_init_gain sets the
    singular values of the policy's output layer. The defaults keep CleanRL's layout and the
    state-dict names of earlier checkpoints."""
    space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    torch.manual_seed(0)
    plain = ActorCritic(space, 3, memory.make("lstm", 6, 6), head_size=8)
    assert {k for k in plain.state_dict() if k.startswith(("actor", "critic"))} == {
        "actor.weight", "actor.bias", "critic.weight", "critic.bias"}
    torch.testing.assert_close(torch.linalg.svdvals(plain.actor.weight.detach()), torch.full((3,), 0.01))

    agent = ActorCritic(space, 3, memory.make("lstm", 6, 6), head_size=8, branch_size=5, relu_memory=True, actor_init_gain=2.0)
    assert [type(m) for m in agent.actor] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert agent.actor[0].out_features == agent.critic[0].out_features == 5
    assert agent.actor[2].out_features == 3 and agent.critic[2].out_features == 1
    torch.testing.assert_close(torch.linalg.svdvals(agent.actor[2].weight.detach()), torch.full((3,), 2.0))
    torch.testing.assert_close(torch.linalg.svdvals(agent.critic[2].weight.detach()), torch.ones(1))

    T, B = 5, 3
    obs, reset = torch.randn(T, B, 4), torch.zeros(T, B, dtype=torch.bool)
    state = agent.initial_state(B)
    with torch.no_grad():
        logits, value, _ = agent.forward_sequence(obs, state, reset)
        y, _ = agent.memory(agent._features(obs, (T, B)), state, reset)
        assert (y < 0).any(), "the check below needs negative memory outputs"
        h = agent.head(torch.relu(y))
        torch.testing.assert_close(logits, agent.actor(h))
        torch.testing.assert_close(value, agent.critic(h).squeeze(-1))
        assert not torch.allclose(logits, agent.actor(agent.head(y)))


@pytest.mark.parametrize("kwargs,match", [({"branch_size": -1}, "branch size"), ({"actor_init_gain": 0.0}, "actor init gain")])
def test_actor_critic_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ActorCritic(spaces.Box(-1.0, 1.0, (4,), np.float32), 3, memory.make("lstm", 6, 6), **kwargs)
