"""NoisyRecall (envs/noisy_recall.py, envs/recall_sequences.py): the task's distribution, the RL framing, seeding, the native
vector env against gymnasium's SyncVectorEnv of single envs, torch mode, registration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers memrl/NoisyRecall-v0)
from envs.noisy_recall import ENV_ID, NoisyRecallEnv, NoisyRecallVectorEnv, register_envs
from envs.recall_sequences import NoisyRecallConfig, generate, hash32, random_words

SMALL = dict(vocab_size=12, noise_vocab_size=4, seq_len=10, frac_noise=0.3)  # K = 4, S = 4


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------


def lowbias32_reference(x: np.ndarray) -> np.ndarray:
    """The hash in numpy uint32, whose multiplication wraps mod 2^32 by definition."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def reference_episode(cfg: NoisyRecallConfig, words: list[int]) -> tuple[list[int], list[int]]:
    """MAD's generator loop (mad/data/instances.py, multi-query), fed the env's random words and
    with the forced pair drawn among the S real slots. Returns (tokens [L], targets [L-1])."""
    S, K = cfg.num_slots, cfg.num_keys
    ns, nv = cfg.vocab_size - cfg.noise_vocab_size, cfg.noise_vocab_size
    u_noise, u_first, u_second = words[:S], words[S : 2 * S], words[2 * S : 3 * S]
    u_map = words[3 * S : 3 * S + K]
    u_forced, u_probe = words[3 * S + K], words[3 * S + K + 1]

    def below(u: int, n: int) -> int:
        return (u * n) >> 32

    forced = below(u_forced, S)
    mapping = [K + below(w, K) for w in u_map]
    tokens: list[int] = []
    targets: list[int] = []
    shown: dict[int, int] = {}
    for i in range(S):
        if i != forced and u_noise[i] < cfg.noise_threshold:
            tokens += [ns + below(u_first[i], nv), ns + below(u_second[i], nv)]
            targets += [-1, -1]
        else:
            k = below(u_first[i], K)
            v = mapping[k]
            tokens += [k, v]
            targets += [v - K if k in shown else -1, -1]  # step 2i predicts token 2i + 1
            shown[k] = v
    distinct = sorted(shown)
    probe = distinct[below(u_probe, len(distinct))]
    tokens += [probe, mapping[probe]]
    targets += [mapping[probe] - K]
    return tokens, targets


def oracle_actions(obs: np.ndarray, memory: np.ndarray, prev: np.ndarray, K: int) -> np.ndarray:
    """A policy that remembers every pair it saw: memory [N, K] holds the last value index seen
    after each key. Updates memory with the (prev, obs) pair; returns the actions [N]."""
    ns = 2 * K
    n = np.arange(len(obs))
    is_value = (obs >= K) & (obs < ns) & (prev >= 0) & (prev < K)
    memory[n[is_value], prev[is_value]] = obs[is_value] - K
    return np.where(obs < K, memory[n, np.minimum(obs, K - 1)], 0)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def test_hash_matches_uint32_reference():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 2**32, 10_001), [0, 1, 2**31 - 1, 2**31, 2**32 - 1]])
    got = hash32(torch.from_numpy(x.astype(np.int64))).numpy()
    np.testing.assert_array_equal(got, lowbias32_reference(x).astype(np.int64))


@pytest.mark.parametrize(
    "kw",
    [dict(), SMALL, dict(vocab_size=10, noise_vocab_size=0, seq_len=4, frac_noise=0.0),
     dict(vocab_size=9, noise_vocab_size=3, seq_len=40, frac_noise=0.9)],
)
def test_generate_matches_reference_loop(kw):
    cfg = NoisyRecallConfig(**kw)
    M = 64
    seed_lo = torch.arange(M, dtype=torch.int64) * 7919
    seed_hi = torch.arange(M, dtype=torch.int64) % 3
    episode = torch.arange(M, dtype=torch.int64) % 5
    ep = generate(cfg, seed_lo, seed_hi, episode)
    words = random_words(seed_lo, seed_hi, episode, cfg.num_words)
    assert ep.tokens.shape == (cfg.seq_len, M) and ep.targets.shape == (cfg.seq_len - 1, M)
    for m in range(M):
        tokens, targets = reference_episode(cfg, words[:, m].tolist())
        assert ep.tokens[:, m].tolist() == tokens
        assert ep.targets[:, m].tolist() == targets
        assert int(ep.num_scored[m]) == sum(t >= 0 for t in targets)


def test_sequence_statistics():
    """Over many episodes: the noise fraction, key/value/noise uniformity, the mapping, the probe
    (shown before, with its value, uniform over the distinct keys shown), at least one pair."""
    cfg = NoisyRecallConfig(vocab_size=32, noise_vocab_size=16, seq_len=16, frac_noise=0.6)
    S, K, ns, M = cfg.num_slots, cfg.num_keys, 16, 40_000
    ids = torch.arange(M, dtype=torch.int64)
    ep = generate(cfg, ids, ids // 7, ids % 3)
    tok = ep.tokens.T.numpy()  # [M, L]
    first, second = tok[:, 0 : 2 * S : 2], tok[:, 1 : 2 * S : 2]  # [M, S]
    noise = first >= ns
    pair = ~noise
    # Layout: a slot is wholly noise or a key followed by a value.
    assert ((second >= ns) == noise).all()
    assert (first[pair] < K).all() and ((second[pair] >= K) & (second[pair] < ns)).all()
    assert (tok < cfg.vocab_size).all() and (tok >= 0).all()
    # One slot (uniform over S) is forced to be a pair; the others are noise w.p. frac_noise.
    expected = cfg.frac_noise * (S - 1) / S
    assert abs(noise.mean() - expected) < 0.01
    assert pair.any(axis=1).all()  # MAD misses this about once in seq_len/2 sequences
    # Uniform keys, values, noise tokens (each cell within 5% of its expectation; counts ~1e4+).
    for values, lo, n in [(first[pair], 0, K), (second[pair], K, K), (first[noise], ns, 16)]:
        counts = np.bincount(values - lo, minlength=n)
        assert np.abs(counts / counts.mean() - 1).max() < 0.05, counts
    # The mapping is fixed within a sequence, and two keys may share a value.
    for m in range(200):
        keys_m, vals_m = first[m][pair[m]], second[m][pair[m]]
        for k in np.unique(keys_m):
            assert len(np.unique(vals_m[keys_m == k])) == 1
    value_of = np.full((M, K), -1)
    rows = np.repeat(np.arange(M), S).reshape(M, S)
    value_of[rows[pair], first[pair]] = second[pair]
    shared = [(len(set(v[v >= 0])) < (v >= 0).sum()) for v in value_of[:2000]]
    assert 0 < np.mean(shared) < 1
    # The probe: a key shown before, followed by its value, uniform over the distinct keys shown.
    probe, probe_value = tok[:, 2 * S], tok[:, 2 * S + 1]
    shown = value_of >= 0  # [M, K]
    assert shown[np.arange(M), probe].all()
    assert (value_of[np.arange(M), probe] == probe_value).all()
    n_distinct = shown.sum(1)
    smallest = shown.argmax(1)
    # P(probe = smallest shown key) = E[1 / n_distinct] if uniform over distinct keys (weighting
    # by how often a key was shown would give a different value).
    assert abs((probe == smallest).mean() - (1 / n_distinct).mean()) < 0.01
    # Scored steps: exactly the repeated keys and the probe.
    targets = ep.targets.T.numpy()
    seen_before = np.zeros((M, S), dtype=bool)
    for i in range(1, S):
        seen_before[:, i] = (pair[:, :i] & (first[:, :i] == first[:, i : i + 1])).any(1)
    assert ((targets[:, 0 : 2 * S : 2] >= 0) == (pair & seen_before)).all()
    assert (targets[:, 1 : 2 * S : 2] == -1).all()
    assert (targets[:, 2 * S] == probe_value - K).all()


@settings(max_examples=40, deadline=None)
@given(
    K=st.integers(1, 20),
    nv=st.integers(0, 20),
    S=st.integers(1, 40),
    frac=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**64 - 1),
)
def test_layout_invariants(K, nv, S, frac, seed):
    frac = frac if nv > 0 else 0.0
    cfg = NoisyRecallConfig(vocab_size=2 * K + nv, noise_vocab_size=nv, seq_len=2 * S + 2, frac_noise=frac)
    env = NoisyRecallVectorEnv(8, **cfg.__dict__)
    obs, _ = env.reset(seed=seed)
    seqs, rewards = [obs], []
    memory, prev = np.zeros((8, K), dtype=np.int64), np.full(8, -1)
    for t in range(cfg.seq_len - 1):
        actions = oracle_actions(obs, memory, prev, K)
        prev = obs
        obs, reward, term, trunc, info = env.step(actions)
        rewards.append(reward)
        assert term.all() == (t == cfg.seq_len - 2) and not trunc.any()
        seqs.append(info["final_obs"] if term.all() else obs)
    tok = np.stack(seqs, 1)  # [8, L]
    first, second = tok[:, 0 : 2 * S : 2], tok[:, 1 : 2 * S : 2]
    noise = first >= 2 * K
    assert ((first < K) | noise).all() and ((second >= K) & (second < 2 * K) | noise).all()
    assert ((second >= 2 * K) == noise).all() and (tok < cfg.vocab_size).all()
    assert (~noise).any(1).all()
    probe = tok[:, 2 * S]
    assert (probe < K).all()
    assert ((first == probe[:, None]) & (second == tok[:, 2 * S + 1][:, None])).any(1).all()
    # The oracle gets everything right.
    np.testing.assert_array_equal(info["accuracy"], 1.0)
    assert np.stack(rewards).sum(0).min() >= 1


# ----------------------------------------------------------------------------------------------
# The RL framing
# ----------------------------------------------------------------------------------------------


def test_single_env_episode():
    env = NoisyRecallEnv(**SMALL)
    cfg = env.config
    obs, info = env.reset(seed=3)
    assert info == {} and isinstance(obs, np.int64)
    ep = generate(cfg, torch.tensor([3]), torch.tensor([0]), torch.tensor([0]))
    tokens = ep.tokens[:, 0].tolist()
    assert obs == tokens[0]
    for t in range(cfg.seq_len - 1):
        target = int(ep.targets[t, 0])
        obs, reward, term, trunc, info = env.step(max(target, 0))
        assert obs == tokens[t + 1] and not trunc
        assert reward == (1.0 if target >= 0 else 0.0)
        assert term == (t == cfg.seq_len - 2)
        assert info == ({"accuracy": 1.0} if term else {})
    assert obs == tokens[-1] >= cfg.num_keys  # the final observation is the probe value
    with pytest.raises(ResetNeeded):
        env.step(0)
    # reset() continues with the next episode of the same seed.
    obs, _ = env.reset()
    assert obs == int(generate(cfg, torch.tensor([3]), torch.tensor([0]), torch.tensor([1])).tokens[0, 0])


def test_oracle_scores_everything():
    N = 256
    env = NoisyRecallVectorEnv(N)
    K = env.config.num_keys
    obs, _ = env.reset(seed=11)
    memory, prev = np.zeros((N, K), dtype=np.int64), np.full(N, -1)
    seen = np.zeros((N, K), dtype=bool)
    total, scored = np.zeros(N), np.zeros(N)
    for t in range(env.config.seq_len - 1):
        is_key = obs < K
        scored += is_key & seen[np.arange(N), np.minimum(obs, K - 1)]  # a key shown before
        seen[np.arange(N)[is_key], obs[is_key]] = True
        actions = oracle_actions(obs, memory, prev, K)
        prev = obs
        obs, reward, term, _, info = env.step(actions)
        total += reward
    assert term.all()
    np.testing.assert_array_equal(info["accuracy"], 1.0)
    np.testing.assert_array_equal(info["final_info"]["accuracy"], 1.0)
    np.testing.assert_array_equal(total, scored)
    assert scored.min() >= 1


def test_random_policy_is_at_chance():
    N = 1024
    env = NoisyRecallVectorEnv(N)
    K = env.config.num_keys
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(env.config.seq_len - 1):
        _, reward, term, _, info = env.step(rng.integers(0, K, N))
        total += reward.sum()
    # Each scored step hits with probability 1/K, so per-episode accuracy averages to 1/K.
    assert abs(info["accuracy"].mean() - 1 / K) < 0.01
    assert term.all() and 0 < total


# ----------------------------------------------------------------------------------------------
# Vector env: equivalence with single envs, autoreset, torch mode
# ----------------------------------------------------------------------------------------------


def _sync(n: int, **kw) -> SyncVectorEnv:
    return SyncVectorEnv([lambda: NoisyRecallEnv(**kw)] * n, autoreset_mode=AutoresetMode.SAME_STEP)


@pytest.mark.parametrize("seed", [0, 2**32 - 2])  # the second crosses a 32-bit boundary at i = 2
def test_vector_env_equals_sync_vector_env(seed):
    """Env i of the vector env reset with seed s is the single env reset with seed s + i, across
    SAME_STEP autoresets, a seedless reset and a per-env seed list."""
    N, kw = 5, SMALL
    native, sync = NoisyRecallVectorEnv(N, **kw), _sync(N, **kw)
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    rng = np.random.default_rng(1)
    L = kw["seq_len"]
    for reset_seed in [seed, None, [seed + 100, None, 7, None, 2**64 - 1]]:
        o1, i1 = native.reset(seed=reset_seed)
        o2, i2 = sync.reset(seed=reset_seed)
        np.testing.assert_array_equal(o1, o2)
        assert i1 == i2 == {}
        ends = 0
        for _ in range(3 * (L - 1) + 2):  # three autoresets and a bit
            a = rng.integers(0, native.config.num_keys, N)
            r1, r2 = native.step(a), sync.step(a)
            for x, y in zip(r1[:4], r2[:4]):
                np.testing.assert_array_equal(x, y)
            assert r1[0].dtype == np.int64 and r1[2].dtype == r1[3].dtype == np.bool_
            info1, info2 = r1[4], r2[4]
            if r2[2].any():
                ends += 1
                np.testing.assert_array_equal(info1["final_obs"], np.array(list(info2["final_obs"])))
                np.testing.assert_array_equal(info1["_final_obs"], info2["_final_obs"])
                np.testing.assert_array_equal(info1["_final_info"], info2["_final_info"])
                f1, f2 = info1["final_info"], info2["final_info"]
                np.testing.assert_allclose(f1["accuracy"], f2["accuracy"], rtol=1e-6)
                np.testing.assert_array_equal(f1["_accuracy"], f2["_accuracy"])
                np.testing.assert_array_equal(info1["accuracy"], f1["accuracy"])
                np.testing.assert_array_equal(info1["_accuracy"], f2["_accuracy"])
                assert (info1["final_obs"] >= native.config.num_keys).all()  # probe values
            else:
                assert info1 == info2 == {}
        assert ends == 3


def test_torch_mode_equals_numpy_mode():
    N, kw = 33, SMALL
    np_env = NoisyRecallVectorEnv(N, **kw)
    th_env = NoisyRecallVectorEnv(N, **kw, device="cpu")
    o1, _ = np_env.reset(seed=9)
    o2, _ = th_env.reset(seed=9)
    assert isinstance(o2, torch.Tensor) and o2.dtype == torch.int64
    np.testing.assert_array_equal(o1, o2.numpy())
    rng = np.random.default_rng(2)
    for step in range(3 * (kw["seq_len"] - 1)):
        a = rng.integers(0, np_env.config.num_keys, N)
        r1 = np_env.step(a)
        r2 = th_env.step(torch.from_numpy(a) if step % 2 else a)  # tensors or arrays
        for x, y, dtype in zip(r1[:4], r2[:4], [torch.int64, torch.float32, torch.bool, torch.bool]):
            assert isinstance(y, torch.Tensor) and y.dtype == dtype
            np.testing.assert_array_equal(x, y.numpy())
        if r1[2].any():
            i1, i2 = r1[4], r2[4]
            assert isinstance(i2["accuracy"], torch.Tensor)
            np.testing.assert_allclose(i1["accuracy"], i2["accuracy"].numpy(), rtol=1e-6)
            np.testing.assert_array_equal(i1["final_obs"], i2["final_obs"].numpy())
            np.testing.assert_array_equal(i1["final_info"]["accuracy"], i1["accuracy"])
            for key in ["_final_obs", "_accuracy", "_final_info"]:
                np.testing.assert_array_equal(i1[key], i2[key].numpy())
        else:
            assert r1[4] == r2[4] == {}


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else x


def test_returned_data_is_not_reused():
    """Observations returned by earlier steps must not change when the env steps on or
    regenerates its sequences (buffers are reused internally)."""
    for device in [None, "cpu"]:
        env = NoisyRecallVectorEnv(4, **SMALL, device=device)
        obs, _ = env.reset(seed=0)
        kept = [obs]
        snapshots = [_np(obs).copy()]
        for _ in range(2 * (SMALL["seq_len"] - 1)):
            obs, reward, term, trunc, info = env.step(np.zeros(4, dtype=np.int64))
            kept.append(obs)
            snapshots.append(_np(obs).copy())
            if "final_obs" in info:
                kept.append(info["final_obs"])
                snapshots.append(_np(info["final_obs"]).copy())
        for k, s in zip(kept, snapshots):
            np.testing.assert_array_equal(_np(k), s)
        arrays = [_np(k) for k in kept]
        for i in range(len(arrays)):
            for j in range(i + 1, len(arrays)):
                assert not np.shares_memory(arrays[i], arrays[j])


def test_vector_env_spaces_and_reset_rules():
    env = NoisyRecallVectorEnv(3, **SMALL)
    assert env.single_observation_space == gym.spaces.Discrete(12)
    assert env.single_action_space == gym.spaces.Discrete(4)
    obs, _ = env.reset(seed=1)
    assert obs in env.observation_space
    assert env.action_space.sample() in env.action_space
    with pytest.raises(ValueError, match="no options"):
        env.reset(options={"reset_mask": np.ones(3, dtype=bool)})
    with pytest.raises(ResetNeeded):
        NoisyRecallVectorEnv(2).step(np.zeros(2, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(vocab_size=31), "must be even and >= 2"),
        (dict(vocab_size=17, noise_vocab_size=16), "must be even and >= 2"),
        (dict(vocab_size=16, noise_vocab_size=16), "must be even and >= 2"),
        (dict(noise_vocab_size=-1), "noise_vocab_size must be >= 0"),
        (dict(seq_len=127), "seq_len must be even and >= 4"),
        (dict(seq_len=2), "seq_len must be even and >= 4"),
        (dict(frac_noise=1.0), r"frac_noise must be in \[0, 1\)"),
        (dict(frac_noise=-0.1), r"frac_noise must be in \[0, 1\)"),
        (dict(frac_noise=float("nan")), r"frac_noise must be in \[0, 1\)"),
        (dict(frac_noise="0.2"), "frac_noise must be a float"),
        (dict(vocab_size=16, noise_vocab_size=0, frac_noise=0.1), "noise_vocab_size must be > 0 when frac_noise > 0"),
        (dict(vocab_size=32.0), "vocab_size must be an int"),
        (dict(seq_len=True), "seq_len must be an int"),
        (dict(vocab_size=2**31 + 16), "must be < 2"),
    ],
)
def test_parameter_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        NoisyRecallEnv(**kw)
    with pytest.raises(ValueError, match=match):
        NoisyRecallVectorEnv(2, **kw)


def test_other_validation():
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        NoisyRecallVectorEnv(0)
    with pytest.raises(ValueError, match="render_mode must be None or 'ansi'"):
        NoisyRecallEnv(render_mode="human")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        NoisyRecallEnv().reset(seed=-1)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        NoisyRecallVectorEnv(2).reset(seed=[1, -1])
    with pytest.raises(ValueError, match="list of 2 ints"):
        NoisyRecallVectorEnv(2).reset(seed=[1, 2, 3])
    single = NoisyRecallEnv(**SMALL)
    single.reset(seed=0)
    for bad in [4, -1, 1.5]:
        with pytest.raises(ValueError, match=r"action must be an int in \[0, 4\)"):
            single.step(bad)
    for device in [None, "cpu"]:
        env = NoisyRecallVectorEnv(2, **SMALL, device=device)
        env.reset(seed=0)
        for bad in [np.array([0, 4]), np.array([-1, 0]), np.array([0, 1, 2]), np.array([0.0, 1.0])]:
            with pytest.raises(ValueError, match=r"actions must be integers in \[0, 4\) with shape \(2,\)"):
                env.step(bad)


# ----------------------------------------------------------------------------------------------
# gymnasium integration
# ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # any checker warning fails the test
def test_gymnasium_env_checker():
    # Through gymnasium.make, so the env has a spec and the checker also tries other render modes.
    check_env(gym.make(ENV_ID, **SMALL).unwrapped)
    check_env(gym.make(ENV_ID, render_mode="ansi").unwrapped)


def test_render_ansi():
    env = NoisyRecallEnv(**SMALL, render_mode="ansi")
    env.reset(seed=4)
    targets = generate(env.config, torch.tensor([4]), torch.tensor([0]), torch.tensor([0])).targets[:, 0]
    for t in range(SMALL["seq_len"] - 1):
        env.step(max(int(targets[t]), 0) if t % 2 == 0 else 0)
    text = env.render()
    assert isinstance(text, str) and f"step {SMALL['seq_len'] - 1}/{SMALL['seq_len'] - 1}" in text
    assert text.count(" ok") == int((targets >= 0).sum()) and "MISS" not in text
    assert NoisyRecallEnv().render() is None


def test_registration_and_make():
    register_envs()  # idempotent
    spec = gym.spec(ENV_ID)
    assert spec.entry_point == "envs.noisy_recall:NoisyRecallEnv"
    assert spec.vector_entry_point == "envs.noisy_recall:NoisyRecallVectorEnv"
    env = gym.make("envs:memrl/NoisyRecall-v0", seq_len=8)
    assert isinstance(env.unwrapped, NoisyRecallEnv) and env.unwrapped.config.seq_len == 8
    venv = gym.make_vec(ENV_ID, num_envs=6, vectorization_mode="vector_entry_point", vocab_size=48, seq_len=16)
    assert isinstance(venv, NoisyRecallVectorEnv) and venv.num_envs == 6
    assert venv.config == NoisyRecallConfig(vocab_size=48, seq_len=16)
    tenv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", device="cpu")
    assert isinstance(tenv.reset(seed=0)[0], torch.Tensor)
    sync = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", seq_len=8)
    np.testing.assert_array_equal(sync.reset(seed=3)[0], NoisyRecallVectorEnv(2, seq_len=8).reset(seed=3)[0])


@pytest.mark.parametrize("device", [None, "cpu"])
def test_pickled_vector_env_continues_exactly(device):
    """train.py checkpoints the env with cloudpickle: the copy must step exactly like the
    original, accuracy included (numpy views must be re-derived, not copied)."""
    import pickle

    env = NoisyRecallVectorEnv(num_envs=3, vocab_size=8, noise_vocab_size=2, seq_len=8, device=device)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(3):
        env.step(rng.integers(0, 3, 3))
    twin = pickle.loads(pickle.dumps(env))
    for _ in range(3 * 7):
        a = rng.integers(0, 3, 3)
        out1, out2 = env.step(a), twin.step(a)
        for x, y in zip(out1[:4], out2[:4]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        if "accuracy" in out1[4]:
            acc1, acc2 = np.asarray(out1[4]["accuracy"]), np.asarray(out2[4]["accuracy"])
            np.testing.assert_array_equal(acc1, acc2)
            assert ((0 <= acc2) & (acc2 <= 1)).all()
