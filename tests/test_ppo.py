"""PPO pieces: GAE against hand-computed cases, the rollout's autoreset handling in both of
gymnasium's modes, sequence batching, and the non-finite guard."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import memory
from agents.actor_critic import ActorCritic
from agents.ppo import NonFiniteError, PPOConfig, compute_gae, ppo_update, to_sequences
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


@pytest.mark.parametrize("backbone", memory.names())
def test_update_recomputes_exactly_what_acting_computed(backbone):
    """On MiniGrid Memory (SAME_STEP autoreset, short and long episodes, a rollout that starts
    from the previous one's carried state), the update's view of the rollout -- BPTT chunks from
    their stored start states, minibatch by minibatch as ppo_update builds them -- gives the same
    log-probabilities and values as acting did. A reset applied one step late, a start state
    from the wrong chunk or env, or a state not carried between rollouts all break this."""
    import envs
    from agents.ppo import _index_obs, sequence_inputs

    torch.manual_seed(0)
    env = envs.make_vec("MiniGrid-MemoryS7-v0", 6, seed=0, view_size=3, movement_only=True)
    agent = ActorCritic(env.single_observation_space, 3, memory.make(backbone, 16, 16), head_size=8)
    L = 8
    collector = RolloutCollector(env, agent, 48, L, torch.device("cpu"), seed=0)
    for _ in range(2):
        ro, _ = collector.collect(agent)
        assert ro.reset[1:].any(), "the rollout should contain episode starts"
        obs, start = sequence_inputs(ro, L)
        reset, actions, logp, values = (to_sequences(x, L) for x in (ro.reset, ro.actions, ro.logprobs, ro.values))
        for mb in torch.randperm(reset.shape[1]).tensor_split(3):
            with torch.no_grad():
                logits, v, _ = agent.forward_sequence(_index_obs(obs, mb), tuple(s[mb] for s in start), reset[:, mb])
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
