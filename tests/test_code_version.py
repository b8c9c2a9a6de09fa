"""The `code` param of every rule: a library edit reruns the jobs whose code it changes, and only those."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from electrode_ml.code_version import script_code_version

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (REPO / "workflow" / "scripts").glob("*.py"))


def versions(tmp_path: Path, name: str, edit=None) -> dict[str, str]:
    """Every script's fingerprint in a copy of the library, after ``edit(package_dir)``."""
    package = tmp_path / name / "electrode_ml"
    shutil.copytree(REPO / "src" / "electrode_ml", package, ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        edit(package)
    return {script: script_code_version(REPO / "workflow" / "scripts" / f"{script}.py", package) for script in SCRIPTS}


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def changed(before: dict, after: dict) -> set[str]:
    return {script for script in before if before[script] != after[script]}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, str]:
    return versions(tmp_path_factory.mktemp("code"), "shipped")


def test_every_rule_passes_its_scripts_code_version():
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        for rule in re.split(r"\n(?=rule )", text)[1:]:
            script = re.search(r'"\.\./scripts/(\w+)\.py"', rule).group(1)
            assert f'code=CODE_VERSION["{script}"]' in rule, (rule_file.name, rule.split(":")[0])


def test_the_version_is_the_same_in_another_copy_and_differs_between_scripts(shipped, tmp_path):
    assert versions(tmp_path, "again") == shipped
    assert len(set(shipped.values())) == len(SCRIPTS)
    assert all(re.fullmatch(r"[0-9a-f]{16}", version) for version in shipped.values())


def test_comments_docstrings_and_layout_change_nothing(shipped, tmp_path):
    def reword(package):
        replace_in(package / "model.py", '"""The paper', '"""Reworded: the paper')  # the module's docstring
        replace_in(package / "predict.py", "All networks of an ensemble evaluated", "All the networks evaluated")  # a class's
        replace_in(package / "training_kernels.py", "ReLU followed by inverted dropout", "ReLU, then inverted dropout")
        text = (package / "tune.py").read_text()
        (package / "tune.py").write_text("# a new comment\n\n\n" + text.replace("\n\n\ndef ", "\n\n\n# note\ndef ", 1))

    assert changed(shipped, versions(tmp_path, "reworded", reword)) == set()


def test_a_change_to_the_training_code_reruns_what_trains_networks_and_nothing_before(shipped, tmp_path):
    def faster_dropout(package):
        replace_in(package / "training_kernels.py", "LEVELS = 256", "LEVELS = 128")

    reruns = changed(shipped, versions(tmp_path, "model", faster_dropout))
    assert {"train", "tune", "group_evaluation", "feature_contribution", "timing", "screen_k"} <= reruns
    assert reruns.isdisjoint({"data", "split", "features", "report", "screen_na", "voltage_trees", "peer_gbm"})


def test_a_change_to_the_ensemble_prediction_reruns_what_predicts_and_no_training(shipped, tmp_path):
    def other_pass_size(package):
        replace_in(package / "predict.py", "CPU_PASS_BYTES = 8_000_000", "CPU_PASS_BYTES = 4_000_000")

    reruns = changed(shipped, versions(tmp_path, "predict", other_pass_size))
    assert reruns == {"timing", "screen_k"}


def test_a_change_to_one_step_reruns_that_rule_alone(shipped, tmp_path):
    def other_log_line(package):
        replace_in(package / "steps.py", 'log.info("seed %d: best epoch %d of %d, %.1f s"',
                   'log.info("seed %d: the best epoch %d of %d, %.1f s"')

    assert changed(shipped, versions(tmp_path, "step", other_log_line)) == {"train"}


def test_a_change_to_the_report_reruns_the_report_alone(shipped, tmp_path):
    def new_heading(package):
        text = (package / "report.py").read_text()
        (package / "report.py").write_text(text + "\nEXTRA_HEADING = 'Summary'\n")

    assert changed(shipped, versions(tmp_path, "report", new_heading)) == {"report"}


def test_a_change_to_the_screening_reruns_the_screens_and_the_report_alone(shipped, tmp_path):
    """Fig 7 drawn in plots.py made every rule that draws a figure (the ensembles, the peer baseline,
    the feature contribution) fingerprint screening.py."""
    def new_threshold(package):
        text = (package / "screening.py").read_text()
        (package / "screening.py").write_text(text + "\nEXTRA_THRESHOLD = 1.0\n")

    assert changed(shipped, versions(tmp_path, "screening", new_threshold)) == {"screen_na", "screen_k", "report"}


def test_relative_imports_rebindings_guarded_imports_and_whole_module_imports_are_followed(tmp_path):
    """Ways a change could slip past the fingerprint, on a package made for the purpose."""
    modules = {
        "a": "from .b import helper\nX = {}\nX['k'] = 1\n\ndef step():\n    return helper() + X['k']\n",
        "b": "def helper():\n    return 1\n",
        "c": "try:\n    from electrode_ml import d\nexcept ImportError:\n    d = None\n\ndef step():\n    return d\n",
        "d": "VALUE = 1\n",
    }
    scripts = {"named": "from electrode_ml.a import step\nstep()\n", "module": "from electrode_ml import c\n",
               "star": "from electrode_ml.c import *\n", "guarded": "from electrode_ml.c import step\n"}

    def fingerprints(name: str, **edits: str) -> dict[str, str]:
        package = tmp_path / name / "electrode_ml"
        package.mkdir(parents=True)
        for module, text in {**modules, **edits}.items():
            (package / f"{module}.py").write_text(text)
        for script, text in scripts.items():
            (tmp_path / name / f"{script}.py").write_text(text)
        return {script: script_code_version(tmp_path / name / f"{script}.py", package) for script in scripts}

    base = fingerprints("base")
    assert changed(base, fingerprints("helper", b="def helper():\n    return 2\n")) == {"named"}
    assert changed(base, fingerprints("rebound", a=modules["a"].replace("X['k'] = 1", "X['k'] = 2"))) == {"named"}
    assert changed(base, fingerprints("value", d="VALUE = 2\n")) == {"module", "star", "guarded"}

def test_a_change_to_the_job_runner_or_the_atomic_writes_reruns_every_rule(shipped, tmp_path):
    """Every script runs its step through runner.run_step and writes through fileio.atomic_path: a
    change there can change any output, so it reruns everything (docs/reliability.md)."""
    def other_quiet_loggers(package):
        replace_in(package / "runner.py", '"filelock", "torch")', '"filelock", "torch", "numba")')

    def other_temporary_name(package):
        text = (package / "fileio.py").read_text()
        (package / "fileio.py").write_text(text + "\nEXTRA_SUFFIX = '.partial'\n")

    assert changed(shipped, versions(tmp_path, "runner", other_quiet_loggers)) == set(SCRIPTS)
    assert changed(shipped, versions(tmp_path, "fileio", other_temporary_name)) == set(SCRIPTS)


def test_the_fingerprints_hold_the_numerical_libraries_versions_and_no_others():
    """An upgrade of what the numbers come from reruns everything; of Snakemake, tqdm, mp-api or
    emmet-core (progress, scheduling, the download client) nothing (docs/reliability.md)."""
    from electrode_ml.code_version import library_versions

    versions = library_versions()
    assert {"python", "torch", "numpy", "scikit-learn", "pymatgen", "botorch", "matminer"} <= set(versions)
    assert not {"snakemake", "tqdm", "mp-api", "emmet-core"} & set(versions)
