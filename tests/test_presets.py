"""train.py --preset: per-env hyperparameters that flags override, recorded in config.json."""

from __future__ import annotations

import json

import pytest

import train
from agents.config import Args, given_fields
from agents.presets import PRESETS_DIR, apply_preset, parse_args

TINY = ["--total-timesteps", "64", "--num-envs", "2", "--num-steps", "32", "--num-minibatches", "1", "--hidden-size", "8", "--no-progress"]
S9 = ["--env-id", "MiniGrid-MemoryS9-v0"]


def _config(tmp_path, name):
    return json.loads((tmp_path / name / "config.json").read_text())


def test_shipped_presets_load_for_every_table():
    import tomllib

    files = sorted(PRESETS_DIR.glob("*.toml"))
    assert files, "presets/ ships at least one file"
    for f in files:
        env_id = f.stem if f.stem.startswith("MiniGrid") else "memrl/NoisyRecall-v0"  # NoisyRecall-*: named presets
        for backbone in tomllib.loads(f.read_text()):
            args = apply_preset(Args(env_id=env_id, backbone=backbone, preset=f.stem), set())
            assert args.preset_applied.startswith(f"presets/{f.name} [{backbone}]")


def test_auto_preset_applies_and_flags_win(tmp_path, capsys):
    assert train.main([*TINY, *S9, "--runs-dir", str(tmp_path), "--run-name", "auto", "--head-size", "16"]) == 0
    cfg = _config(tmp_path, "auto")
    assert cfg["update_epochs"] == 8 and cfg["obs_encoder"] == "cells"  # from the preset
    assert cfg["head_size"] == 16  # the flag wins over the preset's 128
    assert cfg["preset_applied"] == "presets/MiniGrid-MemoryS9-v0.toml [lstm]: update_epochs, obs_encoder, learning_rate"
    assert cfg["learning_rate"] == 2e-3
    err = capsys.readouterr().err
    assert err.startswith("preset presets/MiniGrid-MemoryS9-v0.toml [lstm]")


def test_a_flag_given_at_its_default_value_still_wins():
    args, given = parse_args([*S9, "--update-epochs", "4"])
    assert "update_epochs" in given and args.update_epochs == 4 and args.head_size == 128


def test_preset_none_and_envs_without_presets_keep_the_defaults(tmp_path):
    args, _ = parse_args([*S9, "--preset", "none"])
    assert args.update_epochs == 4 and args.preset_applied is None
    args, _ = parse_args(["--env-id", "MiniGrid-MemoryS7-v0"])  # S7 has no preset file
    assert args.preset_applied is None and args == Args(env_id="MiniGrid-MemoryS7-v0")
    args, _ = parse_args([*S9, "--backbone", "mlp"])  # the env has presets, none for mlp
    assert args.preset_applied is None and args.update_epochs == 4


def test_applying_twice_changes_nothing():
    args, given = parse_args(S9)
    assert apply_preset(args, given_fields(args)) == args


def test_preset_from_a_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('[gru]\nlearning_rate = 1\nmemory_options = ["num_layers=2"]\ntarget_kl = 0.02\n')
    args, _ = parse_args(["--backbone", "gru", "--preset", str(p)])
    assert args.learning_rate == 1.0 and isinstance(args.learning_rate, float)
    assert args.memory_options == ("num_layers=2",) and args.target_kl == 0.02


@pytest.mark.parametrize(
    "text,argv,match",
    [
        (None, ["--preset", "nope"], r"unknown preset 'nope'; choose none, auto, a path to a \.toml file, or one of: .*MiniGrid-MemoryS9-v0"),
        (None, ["--preset", "/no/such.toml"], "no preset file /no/such.toml"),
        ("[lstm]\nbogus_flag = 1\n", [], "sets 'bogus_flag', which is not a train.py setting"),
        ("[lstm]\nbackbone = 'gru'\n", [], "sets 'backbone', which is not a train.py setting a preset may set"),
        ("[lstm]\nupdate_epochs = 'eight'\n", [], "sets update_epochs = 'eight'; it must be a int"),
        ("[lstm]\nupdate_epochs = true\n", [], "sets update_epochs = True; it must be a int"),
        ("[lstm]\nobs_encoder = 'pixels'\n", [], "sets obs_encoder = 'pixels'; it must be one of 'auto', 'onehot', 'cells', 'cnn'"),
        ("[lstm]\nlearning_rate = -1.0\n", [], r"p\.toml \[lstm\]: --learning-rate must be > 0 and finite"),
        ("[gru]\nhead_size = 8\n", [], r"has no table for backbone 'lstm'; it has: gru"),
        ("[lstm\n", [], "is not valid TOML"),
    ],
)
def test_bad_presets_are_one_line_exit_2(tmp_path, capsys, text, argv, match):
    if text is not None:
        p = tmp_path / "p.toml"
        p.write_text(text)
        argv = ["--preset", str(p)]
    runs = tmp_path / "runs"
    code = train.main([*TINY, "--runs-dir", str(runs), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert __import__("re").search(match, err[0]), err[0]
    assert not runs.exists()


def test_a_noisy_recall_preset_on_another_env_is_refused(tmp_path, capsys):
    p = tmp_path / "nr.toml"
    p.write_text("[lstm]\nlearning_rate = 2e-3\nseq_len = 64\n")
    runs = tmp_path / "runs"
    code = train.main([*TINY, "--runs-dir", str(runs), "--env-id", "MiniGrid-MemoryS7-v0", "--preset", str(p)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not runs.exists(), err
    assert "sets 'seq_len', a NoisyRecall setting, but --env-id is MiniGrid-MemoryS7-v0; use this preset with --env-id memrl/NoisyRecall-v0" in err[0]
    args, _ = parse_args(["--preset", str(p), "--seq-len", "16"])  # on NoisyRecall: applies, the flag still wins
    assert args.seq_len == 16 and args.learning_rate == 2e-3


def test_resume_keeps_the_runs_own_values(tmp_path):
    part = train.train(Args(**{**vars(parse_args([*TINY, *S9])[0]), "runs_dir": str(tmp_path), "run_name": "r",
                               "total_timesteps": 128}), on_update=lambda u: u == 1)
    resumed = train.train(Args(resume=str(part), progress=False))
    cfg = _config(tmp_path, "r")
    assert resumed == part and cfg["update_epochs"] == 8 and (part / "result.json").exists()


def test_compare_accepts_runs_made_before_presets_and_refuses_a_preset_mix(tmp_path):
    """A grid directory written before presets existed (config.json without the preset keys) is the
    same experiment when no preset applies; a preset that changes values makes it a different one."""
    import dataclasses

    from experiments.grid import Backbone, Run, UsageError, check_config

    def run_with(argv, have: dict) -> Run:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "config.json").write_text(json.dumps(have))
        config = json.loads(json.dumps(dataclasses.asdict(parse_args(argv)[0])))
        return Run("x", Backbone("lstm", "lstm", ()), 1, "n", d, argv, config)

    old = json.loads(json.dumps(dataclasses.asdict(Args(env_id="MiniGrid-MemoryS7-v0"))))
    for k in ("preset", "preset_applied"):
        del old[k]
    check_config(run_with(["--env-id", "MiniGrid-MemoryS7-v0"], old))  # no preset applies: the same
    old_s9 = {**old, "env_id": "MiniGrid-MemoryS9-v0"}
    check_config(run_with([*S9, "--preset", "none"], old_s9))
    with pytest.raises(UsageError, match="setting.s. differ"):
        check_config(run_with(S9, old_s9))  # the lstm preset changes head_size, epochs, encoder


@pytest.mark.parametrize("name,task", [("NoisyRecall-quick", (8, 2, 32)), ("NoisyRecall-MAD", (32, 16, 128))])
def test_named_noisy_recall_presets_set_their_task_in_every_table(name, task):
    import tomllib

    for backbone in tomllib.loads((PRESETS_DIR / f"{name}.toml").read_text()):
        args, _ = parse_args(["--backbone", backbone, "--preset", name])
        assert (args.vocab_size, args.noise_vocab_size, args.seq_len) == task, backbone
    args, _ = parse_args(["--backbone", "mlstm-orth", "--preset", name, "--seq-len", "64"])
    assert args.seq_len == 64  # a flag still wins
