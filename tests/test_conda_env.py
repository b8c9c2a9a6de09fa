"""envs/electrode-ml.yaml and its post-deploy script install what the Makefile installs (checked without conda)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = yaml.safe_load((REPO / "envs" / "electrode-ml.yaml").read_text())
POST_DEPLOY = (REPO / "envs" / "electrode-ml.post-deploy.sh").read_text()


def pins(requirements: Path) -> set[str]:
    return {line.strip() for line in requirements.read_text().splitlines() if line.strip() and not line.startswith("#")}


def makefile_installs() -> dict[str, set[str]]:
    """{"deps": pins pip installs with their dependencies, "no-deps": pins installed with --no-deps} from the
    Makefile's pip lines (requirement files read), plus "package": whether it installs the project itself."""
    installs: dict[str, set[str]] = {"deps": set(), "no-deps": set(), "package": set()}
    for line in (REPO / "Makefile").read_text().splitlines():
        if "pip install" not in line or "--upgrade pip" in line:
            continue
        words = shlex.split(line.split("pip install", 1)[1].replace("$$(grep -m1 '^torch==' requirements.txt)", ""))
        kind = "no-deps" if "--no-deps" in words else "deps"
        for flag, value in zip(words, words[1:]):
            if flag == "-r":
                installs[kind] |= pins(REPO / value)
            elif flag == "-e":
                installs["package"].add(value)
    return installs


def test_the_makefile_is_read():
    installs = makefile_installs()
    assert "torch==2.13.0" in installs["deps"] and "matminer==0.10.1" in installs["no-deps"]
    assert installs["package"] == {"."}


def test_the_env_file_pins_what_the_makefile_installs_with_dependencies():
    """The pins are written out: conda resolves a pip section's relative paths (-r ../requirements.txt, -e ..)
    from the directory of the copy Snakemake makes of the env file, .snakemake/conda/."""
    (pip,) = [entry["pip"] for entry in ENV["dependencies"] if isinstance(entry, dict)]
    assert set(pip) == makefile_installs()["deps"]
    assert not [entry for entry in pip if entry.startswith(("-", ".", "/"))]
    python = re.search(r"^PYTHON \?= python(\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    assert f"python={python}" in ENV["dependencies"]


def test_the_post_deploy_script_installs_the_no_deps_pins_without_dependencies():
    """matminer pins pandas<3; in the env file's pip section it would pull pandas 2 (no per-line --no-deps)."""
    installed = set()
    for line in POST_DEPLOY.splitlines():
        words = shlex.split(line, comments=True)
        if words[:4] == ["python", "-m", "pip", "install"]:
            assert "--no-deps" in words, line
            assert not [word for word in words if word.startswith((".", "/")) or word == "-r"], line
            installed |= {word for word in words[4:] if not word.startswith("-")}
    assert installed == makefile_installs()["no-deps"]
    assert POST_DEPLOY.startswith("#!/usr/bin/env bash\n") and "set -eu" in POST_DEPLOY


def test_the_scripts_find_the_package_without_it_installed(monkeypatch, tmp_path):
    """The env does not install electrode-ml (no path to it resolves there): a script's preamble extends its
    sys.path with the directories on Snakemake's own, and common.smk puts the repository's src/ there."""
    from snakemake.common import get_snakemake_searchpaths

    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'LIBRARY = str(Path(workflow.basedir) / "src")' in common and "sys.path.insert(0, LIBRARY)" in common
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in get_snakemake_searchpaths()


def test_every_library_the_numbers_depend_on_is_pinned():
    """pymatgen's Composition and element data come from pymatgen-core, which pymatgen left open: a fresh
    install took whatever was newest, and the `code` param did not even track it."""
    from electrode_ml.code_version import NUMERICAL_LIBRARIES

    installs = makefile_installs()
    pinned = {re.split(r"==", pin)[0].lower().replace("_", "-") for pin in installs["deps"] | installs["no-deps"]}
    assert {"pymatgen-core", "linear-operator"} <= {name.lower().replace("_", "-") for name in NUMERICAL_LIBRARIES}
    assert {name.lower().replace("_", "-") for name in NUMERICAL_LIBRARIES} <= pinned
    assert all("==" in pin for pin in installs["deps"] | installs["no-deps"])
