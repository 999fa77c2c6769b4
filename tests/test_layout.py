"""The layout's rules: the packages never import the scripts, and no file points outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "memory", "envs", "experiments")
SCRIPTS = {"train", "compare", "sweep"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_no_package_imports_a_script():
    bad = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            hit = _imports(f) & SCRIPTS
            if hit:
                bad.append(f"{f.relative_to(ROOT)} imports {', '.join(sorted(hit))}")
    assert not bad, bad


def test_benchmarks_import_packages_without_path_edits():
    bad = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "benchmarks").glob("*.py"))
           if "sys.path.insert" in f.read_text() or _imports(f) & SCRIPTS]
    assert not bad, bad


def test_every_file_a_source_names_exists():
    """Docstrings and comments may name .md files and repository paths; each must exist here."""
    missing = []
    for f in sorted(ROOT.rglob("*.py")):
        if any(part in (".git", "results", "build") or part.endswith(".egg-info") for part in f.relative_to(ROOT).parts):
            continue
        for name in set(re.findall(r"[A-Za-z0-9_./-]*[A-Za-z0-9_]+\.md\b", f.read_text())):
            if not any(ROOT.rglob(Path(name).name)):
                missing.append(f"{f.relative_to(ROOT)} names {name}")
    assert not missing, missing


def test_every_repository_path_a_source_names_exists():
    """Paths such as agents/encoders.py or benchmarks/ops.py in docstrings and comments must exist."""
    pattern = re.compile(r"\b(?:agents|memory|envs|benchmarks|tests|experiments|docs|presets)/[A-Za-z0-9_/.-]*\.(?:py|md|toml)\b")
    missing = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT)
        if any(part in (".git", "results", "build") or part.endswith(".egg-info") for part in rel.parts):
            continue
        for name in set(pattern.findall(f.read_text())):
            if not (ROOT / name).exists():
                missing.append(f"{rel} names {name}")
    assert not missing, missing

