"""PPO for recurrent policies: GAE over masked rollouts and a sequence-wise update.

Minibatches are groups of whole sequences (an env's rollout, or a BPTT chunk of it), never
shuffled steps; the update recomputes memory states from the state stored at each sequence start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.actor_critic import ActorCritic
from agents.distributions import categorical_entropy
from agents.nested import tree_map
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


def sequence_inputs(ro: Rollout, L: int):
    """The update's view of a rollout: observations as [L, K*N, ...] sequences and the memory
    state stored at each sequence's start ([K*N, ...], same order)."""
    return tree_map(lambda o: to_sequences(o, L), ro.obs), tuple(s.reshape(-1, *s.shape[2:]) for s in ro.start_states)


def index_sequences(obs, idx: Tensor):
    """The sequences ``idx`` of [L, K*N, ...] observations (or a dict of them)."""
    return tree_map(lambda o: o[:, idx], obs)


# ----------------------------------------------------------------------------- the loss terms
# Small functions so the tests can check each term's value and gradient on hand-made numbers
# (tests/test_ppo.py). Each is exactly the float ops ppo_update always ran, in the same order.
# ``mask`` is 1.0 on valid steps, 0.0 elsewhere; ``count`` is its sum, clamped to >= 1.


def masked_mean(x: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """sum(x * mask) / count: the mean of x over the valid steps."""
    return (x * mask).sum() / count


def normalize_advantages(adv: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """(adv - mean) / (std + 1e-8), with the mean and the (biased) std taken over valid steps only."""
    mean = masked_mean(adv, mask, count)
    var = masked_mean((adv - mean) ** 2, mask, count)
    return (adv - mean) / (var.sqrt() + 1e-8)


def clipped_surrogate(ratio: Tensor, adv: Tensor, clip_coef: float, mask: Tensor, count: Tensor) -> Tensor:
    """PPO's clipped policy loss, to be minimized: the mean of max(-A r, -A clip(r, 1 - eps, 1 + eps)),
    i.e. minus the pessimistic (min) surrogate. A ratio that has moved past the band in the
    direction the advantage favours (r > 1 + eps with A > 0, r < 1 - eps with A < 0) gives the
    clipped value and no gradient; elsewhere the gradient in r is -A / count."""
    return masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)), mask, count)


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float, clipped: bool, mask: Tensor, count: Tensor,
) -> Tensor:
    """0.5 * mean (V - R)^2; ``clipped`` (PPO's reference implementation) takes per step the larger
    of that and (V_clip - R)^2 with V_clip = V_old + clip(V - V_old, -eps, eps)."""
    if clipped:
        v_clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
        return 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2), mask, count)
    return 0.5 * masked_mean((new_values - returns) ** 2, mask, count)


def policy_entropy(logp_all: Tensor) -> Tensor:
    """Per-step entropy [...] of a categorical policy given its log-probabilities [..., A] (the
    update takes each head's entropy from ``agent.dist.evaluate``; agents.distributions)."""
    return categorical_entropy(logp_all)


def ppo_loss(pg_loss: Tensor, v_loss: Tensor, entropy: Tensor, ent_coef: float, vf_coef: float) -> Tensor:
    """The minimized total: policy loss - ent_coef * entropy (a bonus: with ent_coef > 0 a step
    raises the entropy) + vf_coef * value loss."""
    return pg_loss - ent_coef * entropy + v_loss * vf_coef


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
            params, new_values, _ = agent.forward_sequence(
                index_sequences(obs, mb), tuple(s[mb] for s in start), reset[:, mb]
            )
            new_logp, entropy = agent.dist.evaluate(params, actions[:, mb])
            logratio = new_logp - old_logp[:, mb]
            ratio = logratio.exp()
            with torch.no_grad():
                old_kl = masked_mean(-logratio, m, count)
                approx_kl = masked_mean((ratio - 1) - logratio, m, count)
                clipfracs.append(masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), m, count).item())

            a = adv_s[:, mb]
            if cfg.norm_adv:
                a = normalize_advantages(a, m, count)
            pg_loss = clipped_surrogate(ratio, a, cfg.clip_coef, m, count)
            v_loss = value_loss(new_values, old_values[:, mb], ret_s[:, mb], cfg.clip_coef, cfg.clip_vloss, m, count)
            ent = masked_mean(entropy, m, count)
            loss = ppo_loss(pg_loss, v_loss, ent, cfg.ent_coef, cfg.vf_coef)

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
