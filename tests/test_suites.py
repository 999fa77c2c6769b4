"""Suites: the suite files (loading, includes, precedence, bad input as one line and exit 2),
compare.py --suite (dry run, a tiny real suite grid with its report), MMER against hand-computed
cases, the published table, the suite report's cells, the POPGym preset, and gymnasium's env
checker on every wrapped POPGym Easy env."""

from __future__ import annotations

import csv
import json
import re
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import compare
from experiments import mmer as mmer_mod
from experiments import rundata, suite_files
from experiments.grid import UsageError

ENV = "memrl/NoisyRecall-v0"
TINY = "--num-envs 4 --num-steps 16 --hidden-size 16 --vocab-size 8 --noise-vocab-size 4 --eval-episodes 4"  # no --seq-len: the suite sets it


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------------------- suite files


def test_the_shipped_popgym_suites_load():
    from envs.popgym import FAMILIES, all_ids

    easy = suite_files.load("popgym-easy")
    assert easy.envs == [f"popgym-{f}Easy-v0" for f in FAMILIES] and easy.score == "mmer"
    assert easy.published is not None and easy.published.is_file()
    every = suite_files.load("popgym")
    assert sorted(every.envs) == sorted(all_ids()) and len(every.envs) == 42
    assert every.published == easy.published  # taken from the included files
    assert set(suite_files.suite_names()) >= {"popgym", "popgym-easy", "popgym-medium", "popgym-hard"}


def test_settings_precedence_and_flags(tmp_path):
    inc = write(tmp_path, """
        envs = ["memrl/NoisyRecall-v0", "MiniGrid-MemoryS7-v0"]
        [settings]
        update_epochs = 3
        learning_rate = 5e-4
        [env."memrl/NoisyRecall-v0"]
        seq_len = 24
    """, "inc.toml")
    top = write(tmp_path, f"""
        description = "two envs"
        include = ["{inc}"]
        envs = ["MiniGrid-MemoryS9-v0"]
        [settings]
        learning_rate = 2e-4
        norm_reward = false
        [env."MiniGrid-MemoryS7-v0"]
        learning_rate = 7e-4
        num_steps = 32
    """)
    s = suite_files.load(str(top))
    assert s.envs == ["memrl/NoisyRecall-v0", "MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS9-v0"] and s.score == "final"
    # The including file's [settings] over the included file's; an env's own table over both.
    assert s.settings["memrl/NoisyRecall-v0"] == {"update_epochs": 3, "learning_rate": 2e-4, "seq_len": 24, "norm_reward": False}
    assert s.settings["MiniGrid-MemoryS7-v0"]["learning_rate"] == 7e-4
    assert s.settings["MiniGrid-MemoryS9-v0"] == {"learning_rate": 2e-4, "norm_reward": False}
    assert s.train_argv("MiniGrid-MemoryS7-v0") == [
        "--update-epochs", "3", "--learning-rate", "0.0007", "--no-norm-reward", "--num-steps", "32"]
    assert suite_files.settings_argv({"norm_obs": True, "memory_options": ["a=1", "b=2"], "seq_len": 8}) == [
        "--norm-obs", "--memory-options", "a=1", "b=2", "--seq-len", "8"]


def test_per_run_precedence_cli_over_env_table_over_settings_over_preset(tmp_path):
    """compare.py's --train-args beat the suite's env table, which beats [settings], which beats the
    backbone's preset (presets/MiniGrid-MemoryS9-v0.toml [lstm]: head 128, 8 epochs, cells, lr 2e-3)."""
    from experiments import grid as planning

    path = write(tmp_path, """
        envs = ["MiniGrid-MemoryS9-v0"]
        [settings]
        update_epochs = 3
        learning_rate = 5e-4
        [env."MiniGrid-MemoryS9-v0"]
        learning_rate = 7e-4
        num_envs = 4
    """)
    suite = suite_files.load(str(path))
    args = compare.Args(backbones=("lstm",), seeds=(1,), total_timesteps=512, out=str(tmp_path / "out"),
                        train_args="--num-envs 2 --num-minibatches 1")
    (run,), _ = planning.plan(args, suite=suite)
    c = run.config
    assert (c["num_envs"], c["learning_rate"], c["update_epochs"], c["head_size"]) == (2, 7e-4, 3, 128)


@pytest.mark.parametrize("text,match", [
    ('envs = ["memrl/NoisyRecall-v0"]\nbogus = 1\n', r"unknown key 'bogus'; the keys are: description, env, envs"),
    ('envs = ["memrl/NoisyRecall-v0"]\nscore = "best"\n', r"score = 'best'; choose one of: mmer, final"),
    ('envs = "memrl/NoisyRecall-v0"\n', r"envs must be a list of env ids"),
    ('envs = ["memrl/NoisyRecall-v0"]\n[settings]\nlearning_rat = 1e-3\n', r"\[settings\] sets 'learning_rat', which is not a train.py setting"),
    ('envs = ["memrl/NoisyRecall-v0"]\n[settings]\nseed = 3\n', r"\[settings\] sets 'seed', which compare.py sets itself"),
    ('envs = ["memrl/NoisyRecall-v0"]\n[env."MiniGrid-MemoryS9-v0"]\nseq_len = 3\n', r"names an env that is not in the suite's envs"),
    ('description = "none"\n', r"the suite has no envs"),
    ('envs = ["memrl/NoisyRecall-v0"]\npublished = "nope.csv"\n', r"published = 'nope.csv', but .*nope.csv does not exist"),
    ('envs = [\n', r"is not valid TOML"),
    ('include = ["SELF"]\n', r"includes itself"),
])
def test_bad_suite_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("SELF", str(path)))
    with pytest.raises(UsageError, match=match) as e:
        suite_files.load(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("extra,match", [
    (["--suite", "popgym-extreme"], r"^error: unknown suite 'popgym-extreme'; choose a path to a .toml file or one of: popgym, popgym-easy"),
    (["--suite", "nowhere/s.toml"], r"^error: no suite file nowhere/s.toml$"),
    (["--suite", "popgym-easy", "--env-ids", ENV], r"^error: give --suite or --env-ids, not both"),
    (["--suite", "BAD"], r"^error: suite file .*bad.toml: \[settings\] sets 'num_env', which is not a train.py setting"),
    (["--suite", "BADVALUE"], r"^error: .*num-envs.* \(with suite badvalue's settings for memrl/NoisyRecall-v0: --num-envs many\)"),
    (["--suite", "popgym-easy", "--mmer-window", "0"], r"^error: --mmer-window must be >= 1 env step, got 0"),
])
def test_bad_suite_input_on_the_command_line_is_one_line_exit_2(tmp_path, capsys, extra, match):
    bad = write(tmp_path, 'envs = ["memrl/NoisyRecall-v0"]\n[settings]\nnum_env = 3\n', "bad.toml")
    badvalue = write(tmp_path, 'envs = ["memrl/NoisyRecall-v0"]\n[settings]\nnum_envs = "many"\n', "badvalue.toml")
    extra = [str(bad) if a == "BAD" else str(badvalue) if a == "BADVALUE" else a for a in extra]
    out = tmp_path / "out"
    code = compare.main(["--backbones", "lstm", "--out", str(out), "--dry-run", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


@pytest.mark.parametrize("suite,envs", [("popgym-easy", 14), ("popgym", 42)])
def test_dry_run_lists_every_run_of_the_suite(tmp_path, capsys, suite, envs):
    pytest.importorskip("popgym")
    code = compare.main(["--suite", suite, "--backbones", "gru", "mlp", "--seeds", "1", "2", "--out", str(tmp_path / "o"), "--dry-run"])
    cap = capsys.readouterr()
    lines = [line for line in cap.out.splitlines() if line.startswith("new ")]
    assert code == 0 and len(lines) == envs * 2 * 2
    assert f"suite {suite} (" in cap.err and f"{envs} envs; score: mmer" in cap.err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- MMER and the published table


def test_mmer_by_hand():
    steps = np.array([2, 4, 6, 8, 10, 12])
    vals = np.array([0.0, 0.2, 1.0, 0.6, -0.5, 0.1])
    # windows of 4 steps: (0, 4] -> 0.1, (4, 8] -> 0.8, (8, 12] -> -0.2
    assert mmer_mod.mmer((steps, vals), 4) == pytest.approx(0.8)
    assert mmer_mod.mmer((steps, vals), 2) == pytest.approx(1.0)  # one point per window: the max point
    assert mmer_mod.mmer((steps, vals), 100) == pytest.approx(vals.mean())  # one window: the whole run
    # windows of 6: (0, 6] -> 0.4, (6, 12] -> 0.0667
    assert mmer_mod.mmer((steps, vals), 6) == pytest.approx(0.4)
    assert mmer_mod.mmer(None, 4) is None and mmer_mod.mmer((np.array([]), np.array([])), 4) is None
    with pytest.raises(ValueError, match="window must be >= 1"):
        mmer_mod.mmer((steps, vals), 0)


def test_the_published_table_names_real_envs_and_models_and_its_source():
    from envs.popgym import FAMILIES, split_id

    path = suite_files.load("popgym-easy").published
    table = mmer_mod.read_published(path)
    assert len(table) >= 24
    for (env, model), pub in table.items():
        family, _ = split_id(env)
        assert family in FAMILIES and model in mmer_mod.PAPER_MODELS.values(), (env, model)
        assert -1.0 <= pub.mean <= 1.0 and "unverified" in pub.source
    assert table[("popgym-RepeatFirstEasy-v0", "GRU")] == mmer_mod.Published(1.0, 0.0, table[("popgym-RepeatFirstEasy-v0", "GRU")].source)
    assert "Morad et al., ICLR 2023" in path.read_text().splitlines()[0]
    assert mmer_mod.paper_model("gru:remember_bias=2") == "GRU" and mmer_mod.paper_model("mlstm") is None


def synthetic_suite_runs():
    """2 envs x (gru, mlstm) x 3 seeds; one mlstm run failed (its seed is left out of the aggregate)."""
    steps = np.arange(1, 9) * 1000
    runs, expected = [], {}
    envs = ("popgym-RepeatFirstEasy-v0", "popgym-CountRecallEasy-v0")
    for e, env in enumerate(envs):
        for b, bb in enumerate(("gru", "mlstm")):
            for seed in (1, 2, 3):
                vals = -0.5 + 0.1 * seed + 0.2 * e - 0.3 * b + 0.05 * np.sin(steps / 700.0 + seed)
                failed = bb == "mlstm" and seed == 3 and e == 1
                runs.append(rundata.RunData(f"{env}__{bb}__{seed}", env, bb, seed, None, "failed" if failed else "finished",
                                            None, {}, {"charts/episodic_return": (steps, vals)}, int(steps[-1]), 1.0, 100.0))
                if not failed:
                    expected[(env, bb, seed)] = max(vals[:4].mean(), vals[4:].mean())  # windows of 4,000 steps
    return runs, envs, expected


def test_suite_report_every_cell(tmp_path):
    from experiments import report
    from experiments.stats import bootstrap_ci, iqm

    runs, envs, expected = synthetic_suite_runs()
    pub = tmp_path / "pub.csv"
    pub.write_text("# a comment line\nenv,model,mmer_mean,mmer_std,source\n"
                   f"{envs[0]},GRU,0.9,0.1,test table\n{envs[1]},GRU,0.2,,test table\n")
    spath = write(tmp_path, f'envs = {json.dumps(list(envs))}\nscore = "mmer"\npublished = "pub.csv"\ndescription = "tiny"\n')
    suite = suite_files.load(str(spath))
    settings = SimpleNamespace(final_frac=0.25, smooth=1, confidence=0.95, resamples=500, mmer_window=4000)
    report.build_report(tmp_path, runs, {e: None for e in envs}, settings, ["gru", "mlstm"], suite)
    with open(tmp_path / "suite.csv") as f:
        rows = {(r["env"], r["backbone"]): r for r in csv.DictReader(f)}
    for env in envs:
        for bb in ("gru", "mlstm"):
            want = [v for (e, b, s), v in expected.items() if e == env and b == bb]
            row = rows[(env, bb)]
            assert int(row["seeds"]) == len(want) and float(row["score_mean"]) == pytest.approx(np.mean(want), abs=1e-4)
    assert float(rows[(envs[0], "gru")]["paper_mean"]) == 0.9
    assert float(rows[(envs[0], "gru")]["gap"]) == pytest.approx(float(rows[(envs[0], "gru")]["score_mean"]) - 0.9, abs=2e-4)
    assert rows[(envs[0], "mlstm")]["paper_mean"] == ""  # the paper has no mlstm
    md = (tmp_path / "suite.md").read_text()
    # The aggregate: per seed, the mean and IQM over envs; gru has all 3 seeds, mlstm 2 (seed 3 failed on one env).
    agg = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[1] in ("gru", "mlstm"):
            agg[cells[1]] = cells
    for bb, seeds in (("gru", (1, 2, 3)), ("mlstm", (1, 2))):
        means = [np.mean([expected[(e, bb, s)] for e in envs]) for s in seeds]
        iqms = [iqm([expected[(e, bb, s)] for e in envs]) for s in seeds]
        assert agg[bb][2] == str(len(seeds)) and agg[bb][3] == f"{np.mean(means):.3f}" and agg[bb][5] == f"{np.mean(iqms):.3f}"
        ci = bootstrap_ci(means, 0.95, 500)
        assert agg[bb][4] == f"[{ci.low:.3f}, {ci.high:.3f}]"
    assert agg["gru"][0] == "1" and agg["mlstm"][0] == "2"  # ranked by the mean
    assert agg["gru"][7] == f"{np.mean([0.9, 0.2]):.3f}" and agg["mlstm"][7] == ""


def test_a_tiny_suite_grid_runs_its_settings_and_reports_again(tmp_path, capsys):
    """compare.py --suite end to end: the env table's setting reaches the run's config.json, suite.md
    is written, and --report-only finds the suite again from the grid's directory."""
    spath = write(tmp_path, f"""
        description = "tiny"
        score = "mmer"
        envs = ["{ENV}"]
        [env."{ENV}"]
        seq_len = 12
    """)
    out = tmp_path / "out"
    argv = ["--suite", str(spath), "--backbones", "mlp", "--seeds", "1", "--total-timesteps", "256",
            f"--train-args={TINY}", "--out", str(out), "--jobs", "1", "--resamples", "200", "--mmer-window", "128"]
    assert compare.main(argv) == 0
    (run_dir,) = [d for d in (out / "runs").iterdir() if d.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seq_len"] == 12  # the suite's env table
    md = (out / "suite.md").read_text()
    assert "# Suite s: MMER" in md and f"| {ENV} | mlp | 1 |" in md
    (out / "suite.md").unlink()
    assert compare.main(["--report-only", "--out", str(out), "--mmer-window", "128", "--resamples", "200"]) == 0
    assert (out / "suite.md").read_text() == md


# ----------------------------------------------------------------------------- POPGym


def test_popgym_ids_take_the_popgym_preset_unless_they_have_their_own():
    from agents import presets

    assert presets.auto_preset("popgym-RepeatFirstEasy-v0") == presets.PRESETS_DIR / "popgym.toml"
    assert presets.auto_preset("popgym:popgym-CountRecallHard-v0") == presets.PRESETS_DIR / "popgym.toml"
    assert presets.auto_preset("MiniGrid-MemoryS9-v0") == presets.PRESETS_DIR / "MiniGrid-MemoryS9-v0.toml"
    assert presets.auto_preset("CartPole-v1") is None
    args, _ = presets.parse_args(["--env-id", "popgym-RepeatFirstEasy-v0", "--backbone", "lstm"])
    assert args.memory_options == ("remember_bias=2",) and args.learning_rate == 3e-3
    assert args.preset_applied.startswith("presets/popgym.toml [lstm]")
    args, _ = presets.parse_args(["--env-id", "popgym-RepeatFirstEasy-v0", "--backbone", "lstm", "--learning-rate", "1e-4"])
    assert args.learning_rate == 1e-4 and args.memory_options == ("remember_bias=2",)
    args, _ = presets.parse_args(["--env-id", "popgym-RepeatFirstEasy-v0", "--backbone", "mlstm"])
    assert args.preset_applied is None and args.learning_rate == 1e-3
    args, _ = presets.parse_args(["--env-id", "popgym-RepeatFirstEasy-v0", "--backbone", "lstm", "--preset", "none"])
    assert args.memory_options == () and args.learning_rate == 1e-3


@pytest.mark.parametrize("family", [
    "Autoencode", "Battleship", "Concentration", "CountRecall", "HigherLower", "MineSweeper",
    "MultiarmedBandit", "NoisyPositionOnlyCartPole", "NoisyPositionOnlyPendulum", "PositionOnlyCartPole",
    "PositionOnlyPendulum", "RepeatFirst", "RepeatPrevious", "VelocityOnlyCartpole"])
def test_every_wrapped_popgym_easy_env_passes_the_env_checker(family):
    pytest.importorskip("popgym")
    from gymnasium.utils.env_checker import check_env

    from envs.popgym import FAMILIES, make_popgym

    assert family in FAMILIES
    env = make_popgym(f"popgym-{family}Easy-v0")
    with warnings.catch_warnings():
        # The passive checker only warns of infos that share objects: make that one fail.
        warnings.filterwarnings("error", message=".*share an object")
        check_env(env, skip_render_check=True)
    env.close()
