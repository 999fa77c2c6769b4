"""Supervised recall probe: each backbone as a sequence model trained directly on NoisyRecall.

No RL: embedding(vocab) -> memory backbone (memory.make(name, d, d, **options)) -> Linear to the
ns/2 value classes, cross-entropy on the scored positions only (value positions whose key was
seen before, and the probe), AdamW for a fixed number of steps, several seeds (MAD's protocol,
docs/design.md sections 2 and 5). Accuracy = correct / scored over fresh held-out sequences. It
isolates memory quality from RL noise and is what the published noisy-recall numbers measure.

    python benchmarks/recall_probe.py --backbones lstm mlstm mlstm-orth --vocab-sizes 32 --seq-lens 128 \\
        --seeds 1 2 3 4 5 --steps 300 --out probe.csv
    python benchmarks/recall_probe.py --backbones mlstm mlstm-orth --vocab-sizes 32 48 80 \\
        --seq-lens 128 256 512 --pairs --jobs 2 --out probe.csv     # (32,128) (48,256) (80,512)

The model is embedding -> `--layers` residual blocks of the backbone -> Linear, with a token shift
at the input (--no-shift turns it off): a single mLSTM layer cannot bind a key to the value that
follows it without seeing the previous token (see Probe). The defaults (d_model 64, batch 32,
lr 3e-3, 300 steps) are sized for a CPU: on the shared 2-core machine one 300-step run took about
25-65 s for mlstm at vocab 32/seq 128 and about 2 min at vocab 80/seq 512; mlstm-orth costs
3-6x mlstm (Newton-Schulz at every step).

Sequences come from the env's own generator (envs.recall_sequences.generate): training batches are
fresh every step (no finite training set unless --train-examples), and the held-out set uses
seeds the training stream never does. A backbone is NAME or NAME:key=value,key=value. --out
appends one CSV row per (setting, backbone, seed) as it finishes; rerunning with the same --out
skips rows already there (so a long sweep can be interrupted and continued). The table gives
mean and a 95% percentile-bootstrap CI over seeds (experiments.stats.bootstrap_ci, scipy.stats.bootstrap).

Single-threaded by default (--threads 1): on the shared 2-core machines more threads hurt; use
--jobs 2 to run two (setting, backbone, seed) jobs at once instead.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import memory
from envs.recall_sequences import NoisyRecallConfig, generate
from experiments.stats import bootstrap_ci

EVAL_SEED_OFFSET = 1 << 31  # held-out sequences: seed words the training stream never uses


@dataclass(frozen=True)
class Job:
    """One probe run; every field goes into the CSV row and identifies it on a rerun."""

    backbone: str
    vocab_size: int
    seq_len: int
    noise_vocab_size: int
    frac_noise: float
    seed: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    d_model: int
    layers: int
    shift: bool
    train_examples: int
    eval_sequences: int


CSV_KEY = [f for f in Job.__dataclass_fields__]
CSV_FIELDS = [*CSV_KEY, "accuracy", "probe_accuracy", "final_loss", "chance", "params", "seconds"]


def parse_backbone(text: str) -> tuple[str, dict]:
    """'mru:kind=ldu,order=8' -> ('mru', {'kind': 'ldu', 'order': 8}) (ValueError if unknown)."""
    name, _, rest = text.partition(":")
    if name not in memory.names():
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(memory.names())}")
    return name, memory.parse_options(name, [s.strip() for s in rest.split(",") if s.strip()])


# ----------------------------------------------------------------------------- data


def sequences(cfg: NoisyRecallConfig, seed: int, first: int, count: int, episode: int) -> tuple[Tensor, Tensor]:
    """Sequences number first .. first+count-1 of stream `seed`, episode `episode`, from the
    env's generator: (inputs [L-1, count], targets [L-1, count]). Input t is token t; target t is
    the value class (0..ns/2-1) of token t+1 where that is scored, else -1 (ignored)."""
    idx = torch.arange(first, first + count, dtype=torch.int64)
    lo = idx & 0xFFFFFFFF
    hi = torch.full_like(idx, seed & 0xFFFFFFFF)
    ep = generate(cfg, lo, hi, torch.full_like(idx, episode))
    return ep.tokens[:-1], ep.targets  # [L-1, M], [L-1, M]


def train_batch(cfg: NoisyRecallConfig, job: Job, step: int, pool: tuple[Tensor, Tensor] | None, g: torch.Generator) -> tuple[Tensor, Tensor]:
    if pool is None:  # fresh sequences every step: batch i of step s is episode s of sequence i
        return sequences(cfg, job.seed, 0, job.batch_size, step)
    pick = torch.randint(pool[0].shape[1], (job.batch_size,), generator=g)
    return pool[0][:, pick], pool[1][:, pick]


def held_out(cfg: NoisyRecallConfig, job: Job) -> tuple[Tensor, Tensor]:
    return sequences(cfg, job.seed, EVAL_SEED_OFFSET, job.eval_sequences, 0)


# ----------------------------------------------------------------------------- model


class Probe(nn.Module):
    """tokens [T, B] -> logits [T, B, classes] through `layers` residual memory blocks.

    shift: the first block's input at t is emb(x_t) + emb_prev(x_{t-1}) (a kernel-2 causal
    convolution over one-hot tokens, RWKV's token shift / the short conv of H3, Based and
    xLSTM's mLSTM block). Without it, a single layer whose write k_t v_t^T is made from x_t alone
    (mlstm, mlstm-orth) cannot bind a key to the value that follows it: recall needs either the
    shift or a second layer (MAD's models have two mixing layers)."""

    def __init__(self, vocab: int, classes: int, d: int, backbone: str, options: dict, layers: int = 1, shift: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.embed_prev = nn.Embedding(vocab + 1, d) if shift else None  # row `vocab`: before the first token
        self.memories = nn.ModuleList(memory.make(backbone, d, d, **options) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers + 1))
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        T, B = tokens.shape
        h = self.embed(tokens)  # [T, B, d]
        if self.embed_prev is not None:
            prev = torch.cat([torch.full_like(tokens[:1], self.embed_prev.num_embeddings - 1), tokens[:-1]])  # [T, B]
            h = h + self.embed_prev(prev)
        # One sequence per column from a fresh state: no resets inside.
        reset = torch.zeros(T, B, dtype=torch.bool, device=tokens.device)
        for mem, norm in zip(self.memories, self.norms):
            y, _ = mem(norm(h), mem.initial_state(B, tokens.device), reset)  # [T, B, d]
            h = h + y
        return self.head(self.norms[-1](h))  # [T, B, classes]


def scored_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over scored positions only (targets -1 are ignored)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)


def scored_correct(logits: Tensor, targets: Tensor) -> tuple[int, int, int, int]:
    """(correct, scored, probe correct, probes) for logits [T, B, C] and targets [T, B]."""
    pred = logits.argmax(-1)  # [T, B]
    mask = targets >= 0
    correct = int(((pred == targets) & mask).sum())
    probe_ok = int((pred[-1] == targets[-1]).sum())  # the last target is always the probe's value
    return correct, int(mask.sum()), probe_ok, int(targets.shape[1])


def evaluate(model: Probe, inputs: Tensor, targets: Tensor, chunk: int = 256) -> tuple[float, float]:
    model.eval()
    c = s = pc = pn = 0
    with torch.no_grad():
        for i in range(0, inputs.shape[1], chunk):
            out = scored_correct(model(inputs[:, i : i + chunk]), targets[:, i : i + chunk])
            c, s, pc, pn = c + out[0], s + out[1], pc + out[2], pn + out[3]
    model.train()
    return c / max(s, 1), pc / max(pn, 1)


def lr_at(step: int, job: Job) -> float:
    """Linear warm-up over the first 5% of steps (at least 1), then cosine decay to 1% (MAD uses a
    cosine schedule)."""
    warm = max(1, job.steps // 20)
    if step < warm:
        return job.lr * (step + 1) / warm
    t = (step - warm) / max(1, job.steps - warm)
    return job.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def run_one(job: Job, threads: int = 1) -> dict:
    """Train one probe and measure it on held-out sequences; returns the CSV row."""
    torch.set_num_threads(threads)
    torch.manual_seed(job.seed)
    cfg = NoisyRecallConfig(job.vocab_size, job.noise_vocab_size, job.seq_len, job.frac_noise)
    name, options = parse_backbone(job.backbone)
    model = Probe(cfg.vocab_size, cfg.num_keys, job.d_model, name, options, job.layers, job.shift)
    opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=job.weight_decay)
    g = torch.Generator().manual_seed(job.seed)
    pool = None
    if job.train_examples:
        pool = sequences(cfg, job.seed, 0, job.train_examples, 0)
    t0 = time.perf_counter()
    losses = []
    for step in range(job.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, job)
        x, y = train_batch(cfg, job, step, pool, g)
        loss = scored_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    acc, probe_acc = evaluate(model, *held_out(cfg, job))
    return {**asdict(job), "accuracy": acc, "probe_accuracy": probe_acc,
            "final_loss": float(np.mean(losses[-max(1, job.steps // 20):])), "chance": 1.0 / cfg.num_keys,
            "params": sum(p.numel() for p in model.parameters()), "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- table


def row_key(row: dict) -> tuple:
    """A row's identity: every Job field, normalized through the Job's types (CSV gives strings)."""
    types = {"backbone": str, "frac_noise": float, "lr": float, "weight_decay": float, "shift": _bool}
    return tuple(types.get(k, int)(row[k]) for k in CSV_KEY)


def _bool(x) -> bool:
    return x if isinstance(x, bool) else str(x) == "True"


def summarize(rows: list[dict], confidence: float = 0.95) -> str:
    """Markdown table: per setting x backbone, mean accuracy over seeds with a bootstrap CI."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        k = (int(r["vocab_size"]), int(r["seq_len"]), float(r["frac_noise"]), r["backbone"])
        groups.setdefault(k, []).append(r)
    lines = [f"| vocab | seq_len | frac_noise | backbone | seeds | accuracy mean | {confidence:.0%} CI | min | max | probe acc | chance | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for (v, L, f, bb), rs in sorted(groups.items(), key=lambda kv: kv[0][:3]):
        acc = np.array([float(r["accuracy"]) for r in rs])
        ci = bootstrap_ci(acc, confidence)
        if ci.note:
            notes.append(f"{bb} at vocab {v}/seq {L}: {ci.note}")
        lines.append(f"| {v} | {L} | {f:g} | {bb} | {len(rs)} | {acc.mean():.3f} | [{ci.low:.3f}, {ci.high:.3f}] | "
                     f"{acc.min():.3f} | {acc.max():.3f} | {np.mean([float(r['probe_accuracy']) for r in rs]):.3f} | "
                     f"{float(rs[0]['chance']):.3f} | {np.mean([float(r['seconds']) for r in rs]):.0f} |")
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _worker(args: tuple[Job, int]) -> dict:
    return run_one(*args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["lstm", "mlstm", "mlstm-orth"], help="NAME or NAME:key=value,... (memory options)")
    p.add_argument("--vocab-sizes", nargs="+", type=int, default=[32], help="vocab sizes (keys + values + noise tokens)")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[128], help="sequence lengths")
    p.add_argument("--pairs", action="store_true", help="zip --vocab-sizes with --seq-lens instead of taking every combination")
    p.add_argument("--noise-vocab-size", type=int, default=16, help="noise tokens (MAD's baseline: 16)")
    p.add_argument("--frac-noise", type=float, default=0.2, help="probability that a slot is noise (MAD's baseline: 0.2)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (model init and data stream)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (5%% warm-up, cosine decay); at 300 steps 3e-3 beat 1e-3 (MAD trains far longer)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (MAD's default: 0)")
    p.add_argument("--d-model", type=int, default=64, help="embedding and backbone width")
    p.add_argument("--layers", type=int, default=1, help="residual memory blocks (MAD's models have 2 mixing layers)")
    p.add_argument("--shift", action=argparse.BooleanOptionalAction, default=True,
                   help="token shift: the first block also sees the previous token (see Probe); --no-shift for the bare backbone")
    p.add_argument("--train-examples", type=int, default=0, help="a fixed training set of this many sequences (MAD: 12,800); 0: fresh every step")
    p.add_argument("--eval-sequences", type=int, default=1024, help="held-out sequences for the accuracy")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=1, help="jobs run at once (processes)")
    p.add_argument("--out", type=str, default=None, help="CSV: one row per run, appended as runs finish; rows already there are reused")
    a = p.parse_args(argv)

    try:
        for b in a.backbones:
            parse_backbone(b)
        if a.pairs and len(a.vocab_sizes) != len(a.seq_lens):
            raise ValueError(f"--pairs needs as many --vocab-sizes as --seq-lens, got {len(a.vocab_sizes)} and {len(a.seq_lens)}")
        settings = list(zip(a.vocab_sizes, a.seq_lens)) if a.pairs else [(v, L) for v in a.vocab_sizes for L in a.seq_lens]
        for v, L in settings:
            NoisyRecallConfig(v, a.noise_vocab_size, L, a.frac_noise)
        for name in ("steps", "batch_size", "d_model", "layers", "eval_sequences", "threads", "jobs"):
            if getattr(a, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    jobs = [Job(b, v, L, a.noise_vocab_size, a.frac_noise, s, a.steps, a.batch_size, a.lr, a.weight_decay, a.d_model,
                a.layers, a.shift, a.train_examples, a.eval_sequences)
            for v, L in settings for b in a.backbones for s in a.seeds]
    rows: list[dict] = []
    out = Path(a.out) if a.out else None
    if out is not None and out.exists():
        with open(out) as f:
            have = {row_key(r): r for r in csv.DictReader(f)}
        wanted = {row_key(asdict(j)) for j in jobs}
        rows = [r for k, r in have.items() if k in wanted]
        jobs = [j for j in jobs if row_key(asdict(j)) not in have]
        print(f"{len(rows)} runs already in {out}; {len(jobs)} to go", file=sys.stderr)

    def record(row: dict) -> None:
        rows.append(row)
        print(f"{row['backbone']:>14} vocab {row['vocab_size']:>3} seq {row['seq_len']:>4} seed {row['seed']}: "
              f"accuracy {row['accuracy']:.3f} (probe {row['probe_accuracy']:.3f}, chance {row['chance']:.3f}) "
              f"in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
        if out is not None:
            new = not out.exists()
            with open(out, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)

    if a.jobs == 1:
        torch.set_num_threads(a.threads)
        for j in jobs:
            record(run_one(j, a.threads))
    elif jobs:
        import multiprocessing as mp

        # spawn: a forked torch process can deadlock in its thread pools.
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            for row in pool.imap_unordered(_worker, [(j, a.threads) for j in jobs]):
                record(row)
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
