"""MRU, the matrix recurrent unit (docs/design.md section 4; M. Levi, mikayahlevi/mru-lm).

Per head the state is an o x o matrix H_t = H_{t-1} M_t (a right cumulative product), where the
state matrix M_t = build_state_matrix(A_t, kind) is built from A_t, a linear function of x_t:

    x_t [input_size] -> Linear(no bias, zero init) -> A_t [heads, o, o] -> M_t -> H_t [heads, o, o]
    y_t = Linear(flatten(H_t W_down)) (+ Linear(x_t) when skip=True),  W_down [heads, o, c]

Resets restart H from the identity (the empty product). The products run in float32 whatever
the model's dtype (float64 stays float64, for the contract tests).

Unbounded growth of H is this model's known failure (products of T matrices whose determinant or
norm is not held near 1: float32 overflows after a few hundred steps of a growing product). So by
default (``stable=True``) each head's state is carried as a log-scale and a unit-norm matrix,
H_t = exp(s_t) U_t with ||U_t||_F = 1 (memory.ops.stable_matrix_scan; docs/design.md section 4,
"The stable evaluation"):
the same products, finite whatever their norm. The readout is linear in H_t, so the scale reaches
the output unless the readout drops it:

- ``readout="norm"`` (default): y from sqrt(o) U_t = H_t / (||H_t||_F / sqrt(o)), each head's state
  rescaled to the identity's norm (scale-invariant, as xLSTM normalizes its heads; at init, H = I,
  it equals the exact readout). Finite on any episode length; the scale s_t is not seen.
- ``readout="exact"``: y from exp(s_t) U_t = H_t, the unnormalized model, finite where H_t fits in
  float32 (exp(s_t) < 3.4e38); its outputs overflow where the plain products would.
- ``stable=False``: the plain products through memory.ops.matrix_scan (exact readout only), as
  before; kept to compare against.

``diagnostics()["state_log_norm"]`` reports the mean log Frobenius norm of H_t over the last
forward's (step, env, head), read from s_t on the stable path, so training can log growth early.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops import matrix_scan, stable_matrix_scan
from memory.ops.stable_scan import identity_state
from memory.registry import register

# The parameterizations of the state matrix, in the order docs/design.md section 4 lists them.
KINDS: tuple[str, ...] = ("plain", "cayley", "expm", "ldu", "qr-cayley", "qr-expm", "det-norm")
DEFAULT_KIND = "ldu"
READOUTS: tuple[str, ...] = ("norm", "exact")
DEFAULT_READOUT = "norm"

# det-norm divides by r = |det M|^(1/o). r -> 0 near a singular matrix would blow the result (and
# the slogdet gradient, A^{-T}) up, so r is clamped from below at this value: a matrix whose
# det-root is under it is multiplied by 1/DET_ROOT_MIN instead, and then has |det| < 1 (it shrinks
# the state instead of exploding it). Exactly singular matrices get a finite, zero-through-det
# gradient (see _det_norm).
DET_ROOT_MIN = 1e-3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state products run in: float64 stays float64, everything else is float32
    (rounding errors compound over a product of T matrices; half precision also overflows early)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _eye_like(a: Tensor) -> Tensor:
    return torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)


# Triangles by multiplying with an o x o 0/1 mask rather than torch.tril/triu: on CPU (1 thread)
# tril of a big batch of small matrices was slower than the multiply, and the backward likewise.
def _mask(a: Tensor, side: int) -> Tensor:
    """The o x o 0/1 mask of the strictly-lower (side -1) or strictly-upper (side 1) triangle."""
    ones = torch.ones(a.shape[-2:], dtype=a.dtype, device=a.device)
    return ones.tril(-1) if side < 0 else ones.triu(1)


def _strict_lower(a: Tensor) -> Tensor:
    return a * _mask(a, -1)  # tril(a, -1)


def _strict_upper(a: Tensor) -> Tensor:
    return a * _mask(a, 1)  # triu(a, 1)


def _diag(v: Tensor) -> Tensor:
    """v [..., o] -> diag(v) [..., o, o] (a broadcast multiply; cheaper than diag_embed on CPU)."""
    return v.unsqueeze(-2) * torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)


def _skew_from_lower(a: Tensor) -> Tensor:
    """K = S - S^T with S = tril(a, -1): skew-symmetric, from the strictly-lower entries only."""
    s = _strict_lower(a)
    return s - s.mT


def _orthogonal(a: Tensor, how: str) -> Tensor:
    """Orthogonal Q from the strictly-lower entries of a [..., o, o] by Cayley or expm."""
    k = _skew_from_lower(a)
    if how == "cayley":
        eye = _eye_like(a)
        # I - K is invertible for every skew K (its eigenvalues are 1 - i*lambda, never 0).
        return torch.linalg.solve(eye - k, eye + k)
    return torch.linalg.matrix_exp(k)


def _centered_diag(a: Tensor) -> Tensor:
    """d - mean(d) for d = diag(a): [..., o], summing to 0, so exp of it has product 1."""
    d = torch.diagonal(a, dim1=-2, dim2=-1)
    return d - d.mean(dim=-1, keepdim=True)


def _det_norm(a: Tensor) -> Tensor:
    """(A + I) / max(|det(A + I)|^(1/o), DET_ROOT_MIN)."""
    o = a.shape[-1]
    p = a + _eye_like(a)
    floor = o * math.log(DET_ROOT_MIN)
    with torch.no_grad():
        ok = torch.linalg.slogdet(p).logabsdet > floor  # [...]
    # slogdet's backward solves with p; at an exactly singular p that is 0/0 = NaN even when the
    # clamp passes a zero gradient. So clamped matrices take the det of I (no gradient through
    # the det; the scale is the constant 1/DET_ROOT_MIN), and only the others go through slogdet.
    safe = torch.where(ok[..., None, None], p, _eye_like(a))
    logdet = torch.where(ok, torch.linalg.slogdet(safe).logabsdet, torch.full_like(ok, floor, dtype=a.dtype))
    return p * torch.exp(-logdet / o)[..., None, None]


def log_frobenius_norm(h: Tensor) -> Tensor:
    """log ||h||_F for h [..., o, o] -> [...], without overflow: torch squares the entries, so a
    float32 norm is inf from entries of ~1.8e19 on, long before the state itself overflows (3.4e38).
    Scaling by the largest entry first keeps it finite for every finite h (-inf for h = 0)."""
    big = h.abs().amax(dim=(-2, -1), keepdim=True)  # [..., 1, 1]
    scaled = h / big.clamp_min(torch.finfo(h.dtype).tiny)
    return big[..., 0, 0].log() + torch.linalg.matrix_norm(scaled).log()


def build_state_matrix(a: Tensor, kind: str = DEFAULT_KIND) -> Tensor:
    """The state matrix M(A) for every a [..., o, o], in float32 (float64 if a is float64).

    Kinds (docs/design.md section 4):
    - ``plain``: A + I (determinant unconstrained).
    - ``cayley``: (I - K)^{-1} (I + K), K = S - S^T from the strictly-lower entries S (orthogonal).
    - ``expm``: expm(K) of the same K (orthogonal).
    - ``ldu``: (L' + diag s)(U' + diag s), L' = tril(A,-1), U' = triu(A,1),
      s = sqrt(exp(d - mean d)), d = diag(A): det exactly 1 (the default).
    - ``qr-cayley`` / ``qr-expm``: Q R with Q orthogonal (Cayley/expm of tril(A,-1)) and
      R = triu(A,1) + diag(exp(d - mean d)): det 1.
    - ``det-norm``: (A + I) / |det(A + I)|^(1/o), with the root clamped at DET_ROOT_MIN.

    Every kind gives M = I at A = 0. Returns [..., o, o]."""
    if kind not in KINDS:
        raise ValueError(f"unknown MRU kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"build_state_matrix: a must be [..., o, o] (square), got {list(a.shape)}")
    a = a.to(compute_dtype(a.dtype))
    if kind == "plain":
        return a + _eye_like(a)
    if kind in ("cayley", "expm"):
        return _orthogonal(a, kind)
    if kind == "ldu":
        diag_s = _diag(torch.exp(0.5 * _centered_diag(a)))  # s = sqrt(exp(d - mean d)), prod(s)^2 = 1
        return (_strict_lower(a) + diag_s) @ (_strict_upper(a) + diag_s)
    if kind in ("qr-cayley", "qr-expm"):
        q = _orthogonal(a, kind[3:])
        r = _strict_upper(a) + _diag(torch.exp(_centered_diag(a)))
        return q @ r
    return _det_norm(a)  # det-norm


class MRU(Memory):
    """Matrix recurrent unit: per head an o x o state H_t = H_{t-1} M(A_t)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        kind: str = DEFAULT_KIND,
        num_heads: int = 4,
        order: int = 8,
        down_cols: int = 8,
        skip: bool = True,
        stable: bool = True,
        readout: str = DEFAULT_READOUT,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown MRU kind {kind!r}; choose one of: {', '.join(KINDS)}")
        if readout not in READOUTS:
            raise ValueError(f"unknown MRU readout {readout!r}; choose one of: {', '.join(READOUTS)}")
        if readout == "norm" and not stable:
            raise ValueError("mru: readout=norm needs stable=true (the plain products overflow before "
                             "they can be normalized); choose readout=exact with stable=false")
        self.stable, self.readout_mode = bool(stable), readout
        for name, v in (("num_heads", num_heads), ("order", order), ("down_cols", down_cols)):
            if v < 1:
                raise ValueError(f"mru option {name} must be >= 1, got {v}")
        self.input_size, self.output_size = input_size, hidden_size
        self.kind, self.num_heads, self.order, self.down_cols = kind, num_heads, order, down_cols
        h, o, c = num_heads, order, down_cols
        # Zero init (as the reference): A = 0, so every kind starts at M = I and H = I, the
        # state neither grows nor decays until learning moves it.
        self.proj = nn.Linear(input_size, h * o * o, bias=False)
        nn.init.zeros_(self.proj.weight)
        # W_down [heads, o, c] ~ N(0, 1/o): an entry of H W_down has the scale of a row of H / sqrt(o).
        self.down = nn.Parameter(torch.randn(h, o, c) / math.sqrt(o))
        self.readout = nn.Linear(h * o * c, hidden_size)
        # At init H = I for every input, so the readout alone is a constant: the policy would see
        # nothing of the observation until the projection has learned. The skip (like the residual
        # connection around a sequence-mixing layer in a language model) passes x_t through from
        # the first step; gradients still reach the projection through dH/dA (tests check both).
        self.skip = nn.Linear(input_size, hidden_size, bias=False) if skip else None
        self._last_log_norm: Tensor | None = None

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The identity: (H,) with H [B, heads, o, o] on the plain path; (U, s) with U = I / sqrt(o)
        [B, heads, o, o] and s = log sqrt(o) [B, heads] on the stable path."""
        dtype = compute_dtype(self.proj.weight.dtype)
        if self.stable:
            return identity_state((batch_size, self.num_heads), self.order, dtype, device)
        eye = torch.eye(self.order, dtype=dtype, device=device)
        return (eye.expand(batch_size, self.num_heads, self.order, self.order).clone(),)

    def state_matrices(self, x: Tensor) -> Tensor:
        """M_t for x [T, B, input_size] -> [T, B, heads, o, o] in the compute dtype."""
        T, B, _ = x.shape
        a = self.proj(x).view(T, B, self.num_heads, self.order, self.order)
        return build_state_matrix(a, self.kind)

    def scaled_states(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, Tensor]:
        """The stable path's (U_t, s_t) for every step, H_t = exp(s_t) U_t: U [T, B, heads, o, o],
        s [T, B, heads], in the compute dtype."""
        if not self.stable:
            raise ValueError("mru: scaled_states needs stable=true")
        m = self.state_matrices(x)  # [T, B, h, o, o]
        u0, s0 = state
        return stable_matrix_scan(m, reset, (u0.to(m.dtype), s0.to(m.dtype)))

    def states(self, x: Tensor, state: State, reset: Tensor) -> Tensor:
        """H_t for every step: [T, B, heads, o, o] in the compute dtype (on the stable path
        exp(s_t) U_t, which is inf where H_t leaves the dtype's range)."""
        if self.stable:
            u, s = self.scaled_states(x, state, reset)
            return u * s.exp()[..., None, None]
        m = self.state_matrices(x)  # [T, B, h, o, o]
        (h0,) = state
        return matrix_scan(m, reset, h0.to(m.dtype))

    def _check_state(self, state: State) -> None:
        h, o = self.num_heads, self.order
        if self.stable:
            ok = len(state) == 2 and state[0].shape[1:] == (h, o, o) and state[1].shape[1:] == (h,) \
                and state[0].shape[0] == state[1].shape[0]
            want = f"(U, s) with U [B, {h}, {o}, {o}] and s [B, {h}]"
        else:
            ok = len(state) == 1 and state[0].shape[1:] == (h, o, o)
            want = f"(H,) with H [B, {h}, {o}, {o}]"
        if not ok:
            raise ValueError(f"MRU: state must be {want}, got {[list(s.shape) for s in state]}")

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        self._check_state(state)
        T, B, _ = x.shape
        # Under mixed precision (torch.autocast) the products of many matrices would otherwise run
        # in half precision (fp16 overflows at 65504); the state stays float32 end to end.
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.stable:
                u, s = self.scaled_states(x, state, reset)  # [T, B, h, o, o], [T, B, h]
                feats = u @ self.down.to(u.dtype)  # [T, B, h, o, c]
                if self.readout_mode == "exact":
                    feats = feats * s.exp()[..., None, None]  # = H_t W_down
                else:
                    feats = feats * math.sqrt(self.order)  # H_t W_down / (||H_t||_F / sqrt(o))
                new_state: State = (u[-1], s[-1])
                log_norm = s.detach().mean()
            else:
                hs = self.states(x, state, reset)  # [T, B, h, o, o]
                feats = hs @ self.down.to(hs.dtype)
                new_state = (hs[-1],)
                with torch.no_grad():
                    log_norm = log_frobenius_norm(hs).mean()
        # Mean over (t, b, head) of log ||H_t||_F: kept as a tensor (no device sync here).
        self._last_log_norm = log_norm
        y = self.readout(feats.reshape(T, B, -1).to(self.readout.weight.dtype))  # [T, B, hidden]
        if self.skip is not None:
            y = y + self.skip(x)
        return y, new_state

    def diagnostics(self) -> dict[str, float]:
        if self._last_log_norm is None:
            return {}
        return {"state_log_norm": float(self._last_log_norm)}

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, heads={self.num_heads}, order={self.order}, down_cols={self.down_cols}, "
                f"stable={self.stable}, readout={self.readout_mode!r}")


@register("mru", test_variants=[{"kind": k} for k in KINDS if k != DEFAULT_KIND]
          + [{"readout": "exact"}, {"stable": False, "readout": "exact"}])
def make_mru(
    input_size: int,
    hidden_size: int,
    kind: str = DEFAULT_KIND,
    num_heads: int = 4,
    order: int = 8,
    down_cols: int = 8,
    skip: bool = True,
    stable: bool = True,
    readout: str = DEFAULT_READOUT,
) -> Memory:
    """Matrix recurrent unit: per head an order x order state H_t = H_{t-1} M(A_t).

    kind: state-matrix parameterization, one of plain, cayley, expm, ldu, qr-cayley, qr-expm,
    det-norm. num_heads: heads. order: matrix order o of each head's state. down_cols: columns c of
    the per-head readout W_down [o, c]. skip: add Linear(x_t) to the output. stable: carry each
    state as a log-scale and a unit-norm matrix (finite on any episode length; the same products).
    readout: norm (each head's state rescaled to the identity's norm before the readout) or exact
    (the unnormalized state; overflows where the products do)."""
    return MRU(input_size, hidden_size, kind, num_heads, order, down_cols, skip, stable, readout)
