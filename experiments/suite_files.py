"""Suite files: a benchmark's envs and settings in one hand-editable TOML file, run by
``compare.py --suite NAME``.

A suite file lives in presets/suites/<name>.toml (or anywhere, given as a path) and holds:

    description = "POPGym, Easy difficulty ..."     # one line, shown by --dry-run and the report
    score = "mmer"                                  # what the report scores each run by: "mmer" or "final"
    published = "popgym_paper_mmer.csv"             # optional: a published table beside the file
    include = ["popgym-easy"]                       # optional: other suite files' envs and settings
    envs = ["popgym-RepeatFirstEasy-v0", ...]       # the envs, in report order

    [settings]                                      # train.py settings for every env of the suite
    num_envs = 16

    [env."popgym-PositionOnlyPendulumEasy-v0"]      # train.py settings for one env
    norm_obs = true

Settings are train.py fields (as in presets: ``update_epochs = 8``). Precedence per run: compare.py's
--train-args, then the env's table, then [settings], then the backbone's preset (agents.presets).
Bad files are UsageErrors (one line, exit status 2) naming the file, the key and the choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.grid import OWN_FLAGS, UsageError

SUITES_DIR = Path(__file__).resolve().parents[1] / "presets" / "suites"
SCORES = ("mmer", "final")
_KEYS = {"description", "score", "published", "include", "envs", "settings", "env"}


@dataclass
class SuiteFile:
    name: str
    path: Path
    description: str
    score: str
    envs: list[str]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # env id -> train.py settings (common ones merged in)
    published: Path | None = None

    def train_argv(self, env_id: str) -> list[str]:
        """The env's train.py flags from the suite (common settings, then the env's own)."""
        return settings_argv(self.settings.get(env_id, {}))


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _read(path: Path) -> dict:
    from agents.presets import read_toml

    return read_toml(path, "suite file", UsageError)


def resolve(spec: str) -> Path:
    if spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"no suite file {spec}")
        return path
    path = SUITES_DIR / f"{spec}.toml"
    if not path.is_file():
        raise UsageError(f"unknown suite {spec!r}; choose a path to a .toml file or one of: {', '.join(suite_names())}")
    return path


def load(spec: str, _seen: tuple[Path, ...] = ()) -> SuiteFile:
    """The suite file ``spec`` (a name in presets/suites/ or a path), includes resolved and every
    key checked (train.py settings by name here; their values when compare.py parses the runs)."""
    from agents.config import Args

    path = resolve(spec).resolve()
    if path in _seen:
        raise UsageError(f"suite file {path} includes itself (through {' -> '.join(p.stem for p in _seen)})")
    data = _read(path)
    where = f"suite file {path}"
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; the keys are: {', '.join(sorted(_KEYS))}")
    score = data.get("score", "final")
    if score not in SCORES:
        raise UsageError(f"{where}: score = {score!r}; choose one of: {', '.join(SCORES)}")
    envs = data.get("envs", [])
    if not isinstance(envs, list) or not all(isinstance(e, str) for e in envs):
        raise UsageError(f"{where}: envs must be a list of env ids")
    include = data.get("include", [])
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise UsageError(f"{where}: include must be a list of suite names")

    fields = {f.name for f in dataclasses.fields(Args)}
    own = {flag.lstrip("-").replace("-", "_") for flag in OWN_FLAGS}

    def check_table(table: Any, what: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise UsageError(f"{where}: {what} must be a table of train.py settings")
        out = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name in own or name in ("preset_applied",):
                raise UsageError(f"{where}: {what} sets {key!r}, which compare.py sets itself")
            if name not in fields:
                raise UsageError(f"{where}: {what} sets {key!r}, which is not a train.py setting (python train.py --help)")
            if isinstance(value, dict):
                raise UsageError(f"{where}: {what} sets {key!r} to a table; give a value")
            out[name] = value
        return out

    common = check_table(data.get("settings", {}), "[settings]")
    per_env_raw = data.get("env", {})
    if not isinstance(per_env_raw, dict):
        raise UsageError(f"{where}: env must hold one table per env id ([env.\"ID\"])")
    settings: dict[str, dict[str, Any]] = {}
    all_envs: list[str] = []
    inc_published = None
    for inc in include:
        sub = load(inc, (*_seen, path))
        inc_published = inc_published or sub.published
        for e in sub.envs:
            if e not in all_envs:
                all_envs.append(e)
            settings[e] = {**sub.settings.get(e, {}), **common}
    for e in envs:
        if e not in all_envs:
            all_envs.append(e)
        settings.setdefault(e, dict(common))
    for env_id, table in per_env_raw.items():
        if env_id not in all_envs:
            raise UsageError(f"{where}: [env.\"{env_id}\"] names an env that is not in the suite's envs")
        settings[env_id] = {**settings[env_id], **check_table(table, f"[env.\"{env_id}\"]")}
    if not all_envs:
        raise UsageError(f"{where}: the suite has no envs (give envs = [...] or include = [...])")
    published = data.get("published")
    pub_path = None
    if published is not None:
        pub_path = (path.parent / published).resolve()
        if not pub_path.is_file():
            raise UsageError(f"{where}: published = {published!r}, but {pub_path} does not exist")
    else:
        pub_path = inc_published
    return SuiteFile(path.stem, path, str(data.get("description", "")), score, all_envs, settings, pub_path)


def settings_argv(settings: dict[str, Any]) -> list[str]:
    """train.py settings as flags: ``norm_obs = true`` -> --norm-obs, a list -> --key a b."""
    argv: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


RECORD = "suite.json"


def record(out: Path, suite: SuiteFile) -> None:
    """Note in the grid's directory which suite it runs, so --report-only reports it again."""
    import json

    from experiments.report import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    spec = suite.name if suite.path.parent == SUITES_DIR else str(suite.path)
    write_atomic(out / RECORD, json.dumps({"suite": spec}).encode())


def recorded(out: Path) -> SuiteFile | None:
    """The suite a grid's directory was run with (record), or None."""
    import json

    try:
        spec = json.loads((out / RECORD).read_text())["suite"]
    except (OSError, ValueError, KeyError):
        return None
    return load(spec)
