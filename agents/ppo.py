"""PPO for recurrent policies: GAE over masked rollouts and a sequence-wise update.

Minibatches are groups of whole sequences (an env's rollout, or a BPTT chunk of it), never
shuffled steps; the update recomputes memory states from the state stored at each sequence start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.actor_critic import ActorCritic
from agents.rollout import Rollout


class NonFiniteError(RuntimeError):
    """A loss or gradient went inf/NaN; raised before the optimizer touches the weights."""


@dataclass
class PPOConfig:
    """PPO's settings (CleanRL's defaults), defined once: train.py's Args inherits them, so each is
    also a command-line flag (--learning-rate, --clip-coef, ...) with the docstring as its help."""

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


def compute_gae(
    rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, dones: Tensor,
    valid: Tensor, gamma: float, lam: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns [T, N] that never cross an episode boundary.

    delta_t = r_t + gamma * next_value_t * (1 - terminated_t) - V_t;
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}. A truncation (done, not terminated)
    bootstraps from next_value_t (see agents.rollout). Invalid steps get A = 0 and no return."""
    T = rewards.shape[0]
    not_term = (~terminated).to(values.dtype)
    carry = (~dones).to(values.dtype) * gamma * lam
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(T)):
        last = deltas[t] + carry[t] * last
        adv[t] = last
    adv = adv * valid
    return adv, adv + values


def to_sequences(x: Tensor, bptt_len: int) -> Tensor:
    """[T, N, ...] -> [L, K*N, ...]: cut each env's rollout into K = T/L chunks; sequence k*N + n is
    chunk k of env n (matching the [K, N] order of Rollout.start_states)."""
    T, N = x.shape[:2]
    K = T // bptt_len
    return x.reshape(K, bptt_len, N, *x.shape[2:]).transpose(0, 1).reshape(bptt_len, K * N, *x.shape[2:])


def _seq_obs(obs, L: int):
    if isinstance(obs, dict):
        return {k: _seq_obs(v, L) for k, v in obs.items()}
    return to_sequences(obs, L)


def sequence_inputs(ro: Rollout, L: int):
    """The update's view of a rollout: observations as [L, K*N, ...] sequences and the memory
    state stored at each sequence's start ([K*N, ...], same order)."""
    return _seq_obs(ro.obs, L), tuple(s.reshape(-1, *s.shape[2:]) for s in ro.start_states)


def _index_obs(obs, idx: Tensor):
    if isinstance(obs, dict):
        return {k: _index_obs(v, idx) for k, v in obs.items()}
    return obs[:, idx]


def _masked_mean(x: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    return (x * mask).sum() / count


def ppo_update(
    agent: ActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: PPOConfig,
    bptt_len: int, update_index: int = 0,
) -> dict[str, float]:
    """One PPO update on a rollout. Returns CleanRL's loss statistics. Raises NonFiniteError
    (naming the loss and the update) before stepping the optimizer on a non-finite loss/gradient."""
    adv, returns = compute_gae(ro.rewards, ro.values, ro.next_values, ro.terminated, ro.dones, ro.valid, cfg.gamma, cfg.gae_lambda)
    # A non-finite reward or value poisons every minibatch: refuse before the first step.
    for name, x in (("rewards", ro.rewards), ("values", ro.values), ("advantages", adv)):
        if not torch.isfinite(x).all():
            raise NonFiniteError(f"non-finite {name} in the rollout of update {update_index}")
    L = bptt_len
    obs, start = sequence_inputs(ro, L)
    reset, actions, old_logp, old_values, adv_s, ret_s, valid = (
        to_sequences(x, L) for x in (ro.reset, ro.actions, ro.logprobs, ro.values, adv, returns, ro.valid)
    )
    validf = valid.float()
    n_seq = reset.shape[1]
    n_mb = min(cfg.num_minibatches, n_seq)

    clipfracs, approx_kl = [], torch.zeros(())
    pg_loss = v_loss = ent = old_kl = grad_norm = torch.zeros(())
    for epoch in range(cfg.update_epochs):
        perm = torch.randperm(n_seq, device=reset.device)
        for mb in perm.tensor_split(n_mb):
            m = validf[:, mb]
            count = m.sum().clamp_min(1.0)
            logits, new_values, _ = agent.forward_sequence(
                _index_obs(obs, mb), tuple(s[mb] for s in start), reset[:, mb]
            )
            logp_all = torch.log_softmax(logits, -1)
            new_logp = logp_all.gather(-1, actions[:, mb, None]).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            logratio = new_logp - old_logp[:, mb]
            ratio = logratio.exp()
            with torch.no_grad():
                old_kl = _masked_mean(-logratio, m, count)
                approx_kl = _masked_mean((ratio - 1) - logratio, m, count)
                clipfracs.append(_masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), m, count).item())

            a = adv_s[:, mb]
            if cfg.norm_adv:
                mean = _masked_mean(a, m, count)
                var = _masked_mean((a - mean) ** 2, m, count)
                a = (a - mean) / (var.sqrt() + 1e-8)
            pg_loss = _masked_mean(torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)), m, count)

            r, ov = ret_s[:, mb], old_values[:, mb]
            if cfg.clip_vloss:
                v_clipped = ov + (new_values - ov).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * _masked_mean(torch.max((new_values - r) ** 2, (v_clipped - r) ** 2), m, count)
            else:
                v_loss = 0.5 * _masked_mean((new_values - r) ** 2, m, count)
            ent = _masked_mean(entropy, m, count)
            loss = pg_loss - cfg.ent_coef * ent + v_loss * cfg.vf_coef

            for name, val in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", ent), ("loss", loss)):
                if not torch.isfinite(val):
                    raise NonFiniteError(f"non-finite {name} ({val.item()}) in update {update_index}, epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                bad = [n for n, p in agent.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
                optimizer.zero_grad(set_to_none=True)
                where = f"parameters: {', '.join(bad[:4])}" if bad else "every entry finite, their norm overflowed"
                raise NonFiniteError(f"non-finite gradient in update {update_index}, epoch {epoch} ({where})")
            optimizer.step()

        if cfg.target_kl is not None and approx_kl > cfg.target_kl:
            break

    with torch.no_grad():
        vmask = ro.valid
        y_pred, y_true = ro.values[vmask], returns[vmask]
        var_y = y_true.var() if y_true.numel() > 1 else torch.tensor(float("nan"))
        explained_var = float("nan") if not var_y > 0 else (1 - (y_true - y_pred).var() / var_y).item()
    return {
        "losses/value_loss": v_loss.item(),
        "losses/policy_loss": pg_loss.item(),
        "losses/entropy": ent.item(),
        "losses/old_approx_kl": old_kl.item(),
        "losses/approx_kl": approx_kl.item(),
        "losses/clipfrac": sum(clipfracs) / max(len(clipfracs), 1),
        "losses/explained_variance": explained_var,
        "losses/grad_norm": float(grad_norm),
    }
