"""summary.md's rliable section recomputed independently on a synthetic grid (IQM, mean, their
stratified-bootstrap CIs, performance profiles, probability of improvement over --reference), what
it says without rliable, and the plot colours (distinct for any number of backbones, the same
backbone the same colour in every plot)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from experiments import colours, report, rliable_report
from tests.test_compare import ENV, FRAC, SMOOTH, final_of, interquartile_mean, synthetic_runs

needs_rliable = pytest.mark.skipif(not rliable_report.available(), reason='pip install -e ".[report]"')
S9 = "MiniGrid-MemoryS9-v0"
RANGE = {ENV: (1 / 3, 1.0), S9: (0.0, 1.0)}  # chance accuracy with 3 keys (8 symbols, 2 noise), MiniGrid return


def section_tables(summary: str) -> tuple[dict, dict]:
    """(aggregate rows, profile rows) of the rliable section: {backbone: cells}."""
    text = summary.split("## Aggregate over runs and envs (rliable)", 1)[1]
    agg, prof, current = {}, {}, None
    for line in text.splitlines():
        if line.startswith("| backbone | runs |"):
            current = agg
        elif line.startswith("| backbone | tau"):
            current = prof
        elif line.startswith("| ") and current is not None and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            current[cells[0]] = cells[1:]
        elif not line.startswith("|"):
            current = None if line.strip() else current
    return agg, prof


def independent_matrices(runs) -> dict[str, np.ndarray]:
    """Per backbone a [seeds, envs] matrix of normalized final scores, over the seeds that finished
    both envs, computed from the logged curves without the report's code."""
    per: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        if r.status != "finished":
            continue
        tag = "charts/accuracy" if r.env_id == ENV else "charts/episodic_return"
        lo, hi = RANGE[r.env_id]
        per.setdefault(r.backbone, {}).setdefault(r.seed, {})[r.env_id] = (final_of(*r.curves[tag], r.steps) - lo) / (hi - lo)
    return {bb: np.array([[s[ENV], s[S9]] for _, s in sorted(seeds.items()) if len(s) == 2])
            for bb, seeds in per.items()}


def stratified_ci(m: np.ndarray, stat, reps: int = 4000, seed: int = 1) -> tuple[float, float]:
    """Resample the runs of each env (column) independently, with replacement; percentile CI."""
    rng = np.random.default_rng(seed)
    n, k = m.shape
    vals = [stat(m[rng.integers(0, n, size=(n, k)), np.arange(k)]) for _ in range(reps)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def prob_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) per env over every pair of runs (ties count half), averaged over envs."""
    per_env = []
    for j in range(x.shape[1]):
        wins = sum((a > b) + 0.5 * (a == b) for a in x[:, j] for b in y[:, j])
        per_env.append(wins / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_env))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("rliable")
    runs = synthetic_runs()
    settings = SimpleNamespace(final_frac=FRAC, smooth=SMOOTH, confidence=0.95, resamples=4000, reference="weak")
    report.build_report(out, runs, {ENV: 0.5, S9: 0.9}, settings, ["good", "weak"])
    return out, runs


@needs_rliable
def test_rliable_numbers_recomputed_independently(built):
    out, runs = built
    agg, prof = section_tables((out / "summary.md").read_text())
    mats = independent_matrices(runs)
    assert mats["good"].shape == (5, 2) and mats["weak"].shape == (4, 2)  # weak seed 5 failed on one env
    assert list(agg) == ["good", "weak"] and list(prof) == ["good", "weak"]
    for bb, m in mats.items():
        cells = agg[bb]
        assert cells[0] == str(m.shape[0])
        iqm, mean = interquartile_mean(m.ravel()), float(m.mean())
        assert f"{iqm:.3f}" != f"{mean:.3f}", "the grid must tell IQM from mean"
        assert (cells[1], cells[3]) == (f"{iqm:.3f}", f"{mean:.3f}")
        for cell, stat in ((cells[2], lambda a: interquartile_mean(a.ravel())), (cells[4], np.mean)):
            lo, hi = (float(v) for v in cell.strip("[]").split(","))
            want = stratified_ci(m, stat)
            assert lo == pytest.approx(want[0], abs=0.02) and hi == pytest.approx(want[1], abs=0.02), (bb, cell, want)
            assert lo <= (iqm if stat is not np.mean else mean) <= hi
        for t, cell in zip(rliable_report.PROFILE_TAUS, prof[bb]):
            assert cell.split(" ")[0] == f"{np.mean(m > t):.2f}", (bb, t, cell)
    assert agg["weak"][5] == "reference"
    p = prob_improvement(mats["good"], mats["weak"])
    assert 0.5 < p < 1.0
    assert agg["good"][5] == f"{p:.3f}"
    lo, hi = (float(v) for v in agg["good"][6].strip("[]").split(","))
    assert lo <= p <= hi
    for png in ("rliable_intervals.png", "rliable_profiles.png", "rliable_improvement.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@needs_rliable
def test_rebuilt_report_is_the_same(built, tmp_path):
    out, runs = built
    settings = SimpleNamespace(final_frac=FRAC, smooth=SMOOTH, confidence=0.95, resamples=4000, reference="weak")
    report.build_report(tmp_path, runs, {ENV: 0.5, S9: 0.9}, settings, ["good", "weak"])
    assert (tmp_path / "summary.md").read_text() == (out / "summary.md").read_text()


@needs_rliable
@pytest.mark.parametrize("seed", range(6))
def test_fast_probability_of_improvement_equals_rliables(seed):
    from rliable import metrics

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(3 + seed % 2, 5)).astype(float)  # small integers: ties happen
    y = rng.integers(0, 4, size=(4, 5)).astype(float)
    assert rliable_report.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    assert rliable_report.probability_of_improvement(x, x) == pytest.approx(0.5)


def test_reference_by_name_default_and_unknown():
    assert rliable_report.pick_reference(["gru:remember_bias=2", "lstm:remember_bias=2"], "lstm") == "lstm:remember_bias=2"
    assert rliable_report.pick_reference(["mlp", "lstm:remember_bias=2"], None) == "lstm:remember_bias=2"
    assert rliable_report.pick_reference(["mlp", "gru"], None) == "mlp"
    with pytest.raises(ValueError, match=r"--reference 'ffm' is not a backbone of this grid; choose one of: mlp, gru"):
        rliable_report.pick_reference(["mlp", "gru"], "ffm")


def test_without_rliable_the_section_says_how_to_add_it(tmp_path, monkeypatch):
    monkeypatch.setattr(rliable_report, "available", lambda: False)
    settings = SimpleNamespace(final_frac=FRAC, smooth=SMOOTH, confidence=0.95, resamples=200)
    report.build_report(tmp_path, synthetic_runs(), {ENV: 0.5, S9: 0.9}, settings, ["good", "weak"])
    assert rliable_report.INSTALL_HINT in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "rliable_intervals.png").exists()


def test_colours_distinct_for_any_number_and_fixed_per_backbone():
    many = [f"mru:kind=k{i}" for i in range(40)] + list(colours.FIXED) + [f"new{i}" for i in range(20)]
    col = colours.colours(many)
    assert len(set(col.values())) == len(many)
    # A registered backbone keeps its colour whatever else is in the report, and the mapping does
    # not depend on the order labels come in.
    assert colours.colours(["trxl", "mlstm-orth"]) == {"trxl": colours.FIXED["trxl"], "mlstm-orth": colours.FIXED["mlstm-orth"]}
    assert colours.colours(["gru:remember_bias=2", "lstm"])["gru:remember_bias=2"] == colours.FIXED["gru"]
    assert colours.colours(many[::-1]) == col
    assert len(set(colours.FIXED.values())) == len(colours.FIXED)
