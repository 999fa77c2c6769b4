"""Presets: hyperparameters in hand-editable TOML files, one table per backbone, applied under the
flags the command line gave (as RL Baselines3 Zoo's hyperparameter files are), and ``parse_args``,
train.py's command line resolved: the flags, then the preset for the fields they left alone.

An env with a file of its own (presets/<env label>.toml) uses it by default; a name picks
presets/<name>.toml; a path picks any file. Unknown names, files, fields or values are UsageErrors
(one line, exit status 2).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import tyro

from agents.config import Args, UsageError, check_ranges, env_label, given_fields

def parse_args(argv: list[str]) -> tuple[Args, set[str]]:
    """train.py's command line: the flags (tyro), then the preset for fields they left alone.
    Returns the resolved Args and the fields the command line set."""
    args = tyro.cli(Args, args=argv, description=Args.__doc__)
    given = given_fields(args, argv)
    return (args if args.resume is not None else apply_preset(args, given)), given


PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
# Fields a preset may not set: what the run is (env, backbone), where it lives, how it resumes.
_NOT_IN_PRESETS = {"env_id", "backbone", "preset", "preset_applied", "obs_encoder_resolved", "resume", "runs_dir", "run_name"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def auto_preset(env_id: str) -> Path | None:
    """The preset an env takes by default: presets/<env label>.toml, else its suite's preset
    (envs.suites: presets/popgym.toml for every POPGym id), else None."""
    import envs

    own = PRESETS_DIR / f"{env_label(env_id)}.toml"
    if own.is_file():
        return own
    name = envs.suite_of(env_id).preset
    if name is not None and (PRESETS_DIR / f"{name}.toml").is_file():
        return PRESETS_DIR / f"{name}.toml"
    return None


def _read_preset(path: Path) -> dict:
    return read_toml(path, "preset")


def read_toml(path: Path, what: str, error: type[Exception] = UsageError) -> dict:
    """A TOML file's tables; an unreadable or invalid file is ``error`` (one line naming ``what``)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path} ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {path} is not valid TOML ({e})") from None


def apply_preset(args: Args, given: set[str]) -> Args:
    """Args with the preset's values for every field the command line did not set. A preset file
    (TOML) holds one table per backbone, e.g. ``[lstm]`` with ``update_epochs = 8``; the auto preset
    of an env is presets/<env label>.toml. Unknown names, files, fields or values are UsageErrors."""
    import dataclasses

    spec = args.preset
    if args.preset_applied is not None:  # resolved already (compare.py plans with it, then trains)
        return args
    if spec == "none":
        return dataclasses.replace(args, preset_applied=None)
    if spec == "auto":
        path = auto_preset(args.env_id)
        if path is None:
            return dataclasses.replace(args, preset_applied=None)
    elif spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"no preset file {spec}")
    else:
        path = PRESETS_DIR / f"{spec}.toml"
        if not path.is_file():
            raise UsageError(f"unknown preset {spec!r}; choose none, auto, a path to a .toml file, or one of: {', '.join(preset_names())}")
    tables = _read_preset(path)
    table = tables.get(args.backbone)
    if table is None:
        if spec == "auto":  # the env has presets, not for this backbone
            return dataclasses.replace(args, preset_applied=None)
        raise UsageError(f"preset {path} has no table for backbone {args.backbone!r}; it has: {', '.join(sorted(tables)) or '(none)'}")
    fields = {f.name: f for f in dataclasses.fields(Args)}
    check_env_settings(table, args.env_id, f"preset {path} [{args.backbone}]")
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in fields or name in _NOT_IN_PRESETS:
            raise UsageError(f"preset {path} [{args.backbone}] sets {key!r}, which is not a train.py setting a preset may set")
        if name in given:
            continue
        values[name] = tuple(value) if isinstance(value, list) else value
    try:
        taken = ", ".join(values) or "nothing: every value was given"
        where = f"presets/{path.name}" if path.resolve().parent == PRESETS_DIR else str(path)
        out = dataclasses.replace(args, **values, preset_applied=f"{where} [{args.backbone}]: {taken}")
    except TypeError as e:
        raise UsageError(f"preset {path} [{args.backbone}]: {e}") from None
    hints = typing.get_type_hints(Args)
    for name, value in values.items():
        expected = _expected_type(hints[name])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(out, name, value)
        choices = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else None
        ok = (value is None and _optional(hints[name])) or (
            isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            and (choices is None or value in choices)
            and (expected is not tuple or all(isinstance(v, str) for v in value)))
        if not ok:
            want = f"one of {', '.join(map(repr, choices))}" if choices else f"a {expected.__name__}"
            raise UsageError(f"preset {path} [{args.backbone}] sets {name} = {value!r}; it must be {want}")
    check_ranges(args)  # a bad flag is the command line's fault; after this, a range error is the preset's
    try:
        check_ranges(out)
    except UsageError as e:
        raise UsageError(f"preset {path} [{args.backbone}]: {e}") from None
    return out


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def _expected_type(hint) -> type:
    """int, float, bool, str or tuple for a field's type hint (Optional and Literal unwrapped)."""
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple or hint is tuple:
        return tuple
    if args and typing.get_origin(hint) is not Annotated:
        return _expected_type(args[0])
    if typing.get_origin(hint) is Annotated:
        return _expected_type(args[0])
    return hint


def check_env_settings(table: dict, env_id: str, where: str, what: str = "this preset") -> None:
    """A table of train.py settings may set an env suite's settings (envs.suites: vocab_size for
    NoisyRecall, view_size for MiniGrid) only for an env of that suite: for any other env they
    would be ignored silently."""
    import envs

    own = set(envs.suite_of(env_id).flags)
    for key in sorted(table):
        name = key.replace("-", "_")
        owners = envs.flag_owners(name)
        if owners and name not in own:
            suite = owners[0]
            example = next(iter(suite.ids()), None)
            hint = f"; use {what} with --env-id {example}" if example else ""
            raise UsageError(f"{where} sets {key!r}, a {suite.title} setting, but --env-id is {env_id}{hint}")
