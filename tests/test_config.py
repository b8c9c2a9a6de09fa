import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from electrode_ml.config import check_config, check_gpu_requests, check_schema
from electrode_ml.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid(config):
    validate(copy.deepcopy(config), SCHEMA)
    check_config(config)


@pytest.mark.parametrize("path, value, words", [
    (("data", "colour"), "blue", "colour"),
    (("train", "n_seeds"), 1, "n_seeds"),
    (("train", "n_seeds"), "fifty", "n_seeds"),
    (("data", "ions"), [], "ions"),
    (("data", "ions"), ["Li", "Xe"], "Xe"),
    (("models",), ["model9"], "model9"),
    (("data", "source"), "web", "source"),
    (("tune", "lr"), [-0.1, 0.1], "lr"),
    (("tune", "dropout"), [0.2, 0.999], "0.999"),  # dropped every unit: ZeroDivisionError in the first trial
    (("split", "fractions"), [0.8, 0.1], "fractions"),
    (("train", "huber_delta"), {"model1_redox": -0.3}, "model1_redox"),
    (("train", "huber_delta"), {"model9": 0.3}, "model9"),
    (("train", "precision"), "float16", "float16"),
    (("voltage_trees", "weight"), 1.5, "1.5"),
    (("voltage_trees", "weight"), "half", "half"),
    (("voltage_trees", "capacity_weights"), [5, 150], "150"),
    (("voltage_trees", "capacity_weights"), [5], "capacity_weights"),
    (("voltage_trees", "high_capacity_weight"), 1.5, "1.5"),
    (("peer_gbm", "max_iter"), 0, "max_iter"),
    (("peer_gbm", "rounds"), 40, "rounds"),
])
def test_schema_refuses_and_names_the_key(config, path, value, words):
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InputError) as error:
        check_schema(config)
    assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("section, key, value, words", [
    ("split", "fractions", [0.8, 0.1, 0.2], "split.fractions"),
    ("data", "voltage_window", [7, -1], "data.voltage_window"),
    ("tune", "units", [512, 32], "tune.units"),
    ("voltage_trees", "capacity_weights", [95, 5], "voltage_trees.capacity_weights"),
])
def test_inconsistent_values_are_refused_naming_the_key(config, section, key, value, words):
    config[section][key] = value
    with pytest.raises(InputError, match=words):
        check_config(config)


def test_rounded_ion_counts_are_refused_for_the_physics_models_only(config):
    """Physics intervals are round-off wide; MP's rounded counts put the capacity off by more."""
    config["data"]["exact_formulas"] = False
    with pytest.raises(InputError, match=r"^config key data.exact_formulas: false .* model1_phys and model2_phys "):
        check_config(config)
    config["models"] = ["model1", "model2"]
    check_config(config)  # the paper's inputs for the paper's models


def test_bad_config_stops_snakemake_before_any_job(tmp_path, config):
    config["train"]["n_seeds"] = 1
    config["results"] = str(tmp_path / "results")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad), "--cores", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0
    assert "n_seeds" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


# --- issue #7: more refusals, each naming the key, before any job starts (no results folder) ---------

WRONG_VALUES = [
    (("screen", "na", "voltage"), -1, "screen.na.voltage"),
    (("tune", "trials"), 0, "tune.trials"),
    (("tune", "tolerance"), 1.5, "tune.tolerance"),
    (("train", "device"), "tpu", "train.device"),
    (("train", "lr_scale"), 0, "train.lr_scale"),
]


@pytest.mark.parametrize("path, value, key", WRONG_VALUES)
def test_schema_refuses_wrong_values_naming_the_key(config, path, value, key):
    target = config
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    with pytest.raises(InputError, match=f"^config key {key}: {value!r} "):
        check_schema(config)


def error_lines(output: str) -> list[str]:
    """Snakemake's output without its own notes (which profile, that --configfile extends config.yaml)."""
    return [line for line in output.splitlines() if line.strip()
            and not line.startswith(("Using workflow specific profile", "Config file config.yaml is extended"))]


def real_run(config: dict, workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Snakemake on ``config`` (for real unless ``args`` say -n), in its own working directory so that it
    leaves nothing in the repository's .snakemake/ folder; the process and its output."""
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(bad),
                          "--cores", "1", *args], cwd=workdir, capture_output=True, text=True, timeout=300)
    return run, run.stdout + run.stderr


@pytest.mark.parametrize("path, value, key", WRONG_VALUES)
def test_wrong_value_stops_a_real_run_before_any_job(tmp_path, config, path, value, key):
    """Not a dry run: the refusal comes at parse time, so no job starts and no results folder appears."""
    target = config
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    config["results"] = str(tmp_path / "results")
    config["data"]["snapshot"] = str((REPO / config["data"]["snapshot"]).resolve())
    run, output = real_run(config, tmp_path)
    assert run.returncode != 0
    (line,) = error_lines(output)
    assert line.startswith(f"electrode-ml: error: config key {key}: {value!r} "), output[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda config: config["train"].update(n_seeds="ten"), "config key train.n_seeds: 'ten' is not of type 'integer'"),
    (lambda config: config["train"].update(epoch=300),
     "config key train: Additional properties are not allowed ('epoch' was unexpected)"),
    (lambda config: config.pop("split"), "config top level: 'split' is a required property"),
    (lambda config: config.update(train=None), "config key train: None is not of type 'object'"),
    # a float for an integer: JSON Schema lets 0.0 pass, and range() ended the parse in a TypeError traceback
    (lambda config: config["train"].update(first_seed=0.0), "config key train.first_seed: 0.0 is not of type 'integer' (write 0)"),
    # the workflow's own checks, past the schema
    (lambda config: config["split"].update(fractions=[0.8, 0.1, 0.2]),
     "config key split.fractions: [0.8, 0.1, 0.2] sum to 1.1, not 1"),
    (lambda config: config["tune"].update(lr=[0.01, 0.0001]),
     "config key tune.lr: lower bound 0.01 is not below upper bound 0.0001"),
])
def test_a_bad_config_is_one_line_from_a_dry_run(tmp_path, config, edit, message):
    """Snakemake prints an exception raised while it reads the Snakefile with its file, line and traceback,
    and a schema error with the schema and the whole config (10-337 lines): the workflow prints one line."""
    edit(config)
    config["results"] = str(tmp_path / "results")
    run, output = real_run(config, tmp_path, "-n")
    assert run.returncode == 1
    assert error_lines(output) == [f"electrode-ml: error: {message}"], output[-3000:]
    assert f"electrode-ml: error: {message}" in run.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("edit, message", [
    # each passed the schema and failed inside a job, a bad tuning value after replacing the saved trials
    (lambda config: config["tune"].update(lr=[1.0e-4, float("inf")]), "config key tune.lr.1: inf is not a finite number"),
    (lambda config: config["features"].update(formula_variance=float("nan")),
     "config key features.formula_variance: nan is not a finite number"),
    (lambda config: config["tune"].update(seed=2**32), "config key tune.seed: seeds go up to 4294967296, over 4294967295"),
    (lambda config: config["train"].update(first_seed=2**32 - 10),  # its 50th seed is over
     "config key train.first_seed: seeds go up to 4294967335, over 4294967295"),
    # taken as written: a folder named ~ in the working directory, a Snakemake wildcard
    (lambda config: config.update(results="~/runs"), "config key results: '~/runs' would be taken as written"),
    (lambda config: config.update(results="runs_{name}"), "config key results: 'runs_{name}' would be taken as written"),
    (lambda config: config.update(results=str(REPO / "README.md" / "runs")), f"config key results: {REPO / 'README.md'} is a file"),
    # the snapshot's path as the results' (a wildcard was Snakemake's WildcardError; ~ just 'not found')
    (lambda config: config["data"].update(snapshot="data_{x}.csv"),
     "config key data.snapshot: 'data_{x}.csv' would be taken as written"),
    (lambda config: config["data"].update(snapshot="~/snapshot.csv"),
     "config key data.snapshot: '~/snapshot.csv' would be taken as written"),
    (lambda config: config.update(results="  "), "config key results: '  ' begins or ends with white space"),
    (lambda config: config.update(results="runs\0x"), "config key results: 'runs\\x00x' holds a NUL character"),
    (lambda config: config.update(results="r" * 300 + "/runs"), "config key results: " + "r" * 80 + "...: File name too long"),
])
def test_values_that_failed_only_inside_a_job_are_refused_up_front(config, edit, message):
    edit(config)
    with pytest.raises(InputError, match="^" + re.escape(message)):
        check_config(config)


def test_a_null_huber_delta_is_the_unlisted_model_s_mse(config):
    """Snakemake merges a --configfile into config.yaml, so `huber_delta: {}` left model1_redox's delta in place."""
    from electrode_ml.config import model_train_settings
    from electrode_ml.model import TrainSettings

    config["train"]["huber_delta"]["model1_redox"] = None
    check_schema(config)
    settings = model_train_settings(config["train"], "model1_redox")
    unlisted = model_train_settings({**config["train"], "huber_delta": {}}, "model1_redox")
    assert settings == unlisted and "n_seeds" not in settings and "first_seed" not in settings
    assert TrainSettings.from_config(settings, 0, "cpu", "model1_redox").huber_delta is None


def integer_paths(schema: dict, value, path: tuple = ()):
    """The paths of ``value`` (a config) that ``schema`` types as integers, array items included."""
    types = schema.get("type", [])
    if "integer" in (types if isinstance(types, list) else [types]) and isinstance(value, int):
        yield path
    for name, sub in schema.get("properties", {}).items():
        if isinstance(value, dict) and name in value:
            yield from integer_paths(sub, value[name], path + (name,))
    if "items" in schema and isinstance(value, list):
        for index, item in enumerate(value):
            yield from integer_paths(schema["items"], item, path + (index,))


INTEGER_PATHS = list(integer_paths(yaml.safe_load(Path(SCHEMA).read_text()),
                                   yaml.safe_load((REPO / "config.yaml").read_text())))


def test_the_integer_keys_are_found():
    assert {("train", "epochs"), ("train", "first_seed"), ("tune", "trials"), ("tune", "units", 0),
            ("evaluation", "group_seeds"), ("peer_gbm", "max_iter")} <= set(INTEGER_PATHS)


@pytest.mark.parametrize("path", INTEGER_PATHS, ids=lambda path: ".".join(map(str, path)))
def test_a_float_for_an_integer_key_is_refused(config, path):
    """train.epochs: 500.0 passed the schema (JSON Schema counts it an integer) and failed only inside the jobs."""
    target = config
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = float(target[path[-1]])
    key = ".".join(map(str, path))
    with pytest.raises(InputError, match=rf"^config key {re.escape(key)}: {target[path[-1]]!r} is not of type 'integer'"):
        check_schema(config)


@pytest.mark.parametrize("key, text, message", [
    # YAML 1.1 (PyYAML) reads a float only with a decimal point and an exponent only with its sign
    ("lr", "[1e-4, 0.01]", "config key tune.lr.0: '1e-4' is not of type 'number' (YAML reads 1e-4 as text; write 1.0e-4)"),
    ("lr", "[0.0001, 1.0e4]", "config key tune.lr.1: '1.0e4' is not of type 'number' (YAML reads 1.0e4 as text; write 1.0e+4)"),
    ("tolerance", "'0.05'", "config key tune.tolerance: '0.05' is not of type 'number' (text: quoted, or nested in --config, which passes nested values as text; in a --configfile write 0.05)"),
    ("trials", "'30'", "config key tune.trials: '30' is not of type 'integer' (text: quoted, or nested in --config, which passes nested values as text; in a --configfile write 30)"),
    # as `--config tune='{lr: [1.0e-4, 1.0e-2]}'` passes it: the hint once said to write what was written
    ("lr", "[0.0001, '1.0e-2']", "config key tune.lr.1: '1.0e-2' is not of type 'number' (text: quoted, or nested in --config, which passes nested values as text; in a --configfile write 1.0e-2)"),
    ("space_groups", "'true'", "config key features.space_groups: 'true' is not of type 'boolean' (text: quoted, or nested in --config, which passes nested values as text; in a --configfile write true)"),
    ("trials", "30.0", "config key tune.trials: 30.0 is not of type 'integer' (write 30)"),
])
def test_a_number_yaml_reads_otherwise_gets_a_hint_that_loads(tmp_path, key, text, message):
    """The spelling the hint gives, put in place of the value, must pass."""
    from electrode_ml.config import load_config

    shipped = (REPO / "config.yaml").read_text()
    line = re.search(rf"^  {key}: .*$", shipped, re.MULTILINE).group(0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(shipped.replace(line, f"  {key}: {text}", 1))
    with pytest.raises(InputError) as error:
        load_config(bad)
    assert str(error.value) == f"{bad}: {message}"
    value = re.search(r"key \S+: (\S+) is not of type", message).group(1)
    value = value if value in text else value.strip("'")  # the message quotes text, the YAML may not
    hinted = re.search(r"write (\S+)\)$", message).group(1)
    bad.write_text(shipped.replace(line, f"  {key}: {text.replace(value, hinted)}", 1))
    load_config(bad)


def test_the_config_and_the_docs_spell_no_number_yaml_reads_as_text():
    """What users copy (config.yaml, settings in backticks in the README and docs/) must not spell an exponent
    without a decimal point and a sign; the config's own note on it names 1e-4 as the wrong way."""
    text_number = re.compile(r"\b\d+(?:\.\d*)?[eE]\d+\b|\b\d+[eE][-+]?\d+\b")
    config_lines = (REPO / "config.yaml").read_text().splitlines()
    assert [line for line in config_lines if text_number.search(line) and "YAML reads 1e-4 as text" not in line] == []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        settings = [span for span in re.findall(r"`([^`\n]+)`", doc.read_text()) if ":" in span or "=" in span]
        assert [span for span in settings if text_number.search(span)] == [], doc


def test_default_config_keeps_the_papers_mse_for_its_models_and_huber_for_model1_redox(config):
    from electrode_ml.model import TrainSettings

    settings = {model: TrainSettings.from_config(config["train"], 0, "cpu", model) for model in ("model1", "model2", "model1_redox")}
    assert settings["model1"].huber_delta is None and settings["model2"].huber_delta is None
    assert settings["model1_redox"].huber_delta == config["train"]["huber_delta"]["model1_redox"] > 0
    del config["train"]["huber_delta"]
    validate(config, SCHEMA)  # a config without it: the schema's default
    assert TrainSettings.from_config(config["train"], 0, "cpu", "model1_redox").huber_delta is None


def test_precision_reaches_the_training_and_defaults_to_float32(config):
    from electrode_ml.model import TrainSettings

    assert config["train"]["precision"] == "float32"
    config["train"]["precision"] = "bfloat16"
    validate(config, SCHEMA)
    assert TrainSettings.from_config(config["train"], 0, "cpu", "model2").precision == "bfloat16"
    del config["train"]["precision"]
    validate(config, SCHEMA)  # a config without it: the schema's default
    assert TrainSettings.from_config(config["train"], 0, "cpu", "model2").precision == "float32"


def test_a_config_from_before_the_peer_budget_gets_the_default(config):
    """peer_gbm is the one optional section: configs written before it still validate, at config.yaml's value."""
    shipped = config.pop("peer_gbm")
    validate(config, SCHEMA)
    assert config["peer_gbm"] == shipped == {"max_iter": 500}


@pytest.mark.parametrize("key, library_default", [("precision", "float32"), ("huber_delta", {})])
def test_a_config_without_a_train_setting_gets_the_librarys_default(config, key, library_default):
    """train.precision and train.huber_delta are optional: the schema fills in what the library does without them."""
    from electrode_ml.model import TrainSettings

    config["train"].pop(key)
    validate(config, SCHEMA)
    assert config["train"][key] == library_default
    assert TrainSettings.precision == "float32" and TrainSettings.huber_delta is None  # no model listed: MSE


def test_the_librarys_defaults_are_config_yamls(config):
    """A caller of the library outside the workflow gets the workflow's behaviour: a function that takes a config
    section's keys either has no default for one or config.yaml's value (space_groups and the trees' family have none)."""
    import inspect

    from electrode_ml.features import build_featurizer
    from electrode_ml.schema import DEFAULT_NA_THRESHOLDS
    from electrode_ml.trees import fit_voltage_trees
    from electrode_ml.tune import SearchSpace

    for function, section in ((build_featurizer, config["features"]), (fit_voltage_trees, config["voltage_trees"])):
        parameters = inspect.signature(function).parameters
        assert set(section) <= set(parameters), function.__name__
        defaults = {key: parameters[key].default for key in section
                    if parameters[key].default is not inspect.Parameter.empty}
        assert defaults == {key: section[key] for key in defaults}, function.__name__
    space = SearchSpace()
    assert [list(space.lr), list(space.units), list(space.dropout)] == [config["tune"][key] for key in ("lr", "units", "dropout")]
    assert DEFAULT_NA_THRESHOLDS == config["screen"]["na"]  # Table 5's filter is `electrode-ml screen`'s default


# --- the tools that read a run's config.yaml outside Snakemake (make bench, make split-spread) --------

def test_load_config_reads_the_shipped_config_as_snakemake_does(config, tmp_path):
    from electrode_ml.config import SCHEMA as PACKAGE_SCHEMA, load_config

    assert PACKAGE_SCHEMA == Path(SCHEMA)
    assert load_config(REPO / "config.yaml") == config
    del config["peer_gbm"]
    older = tmp_path / "older.yaml"
    older.write_text(yaml.safe_dump(config))
    assert load_config(older)["peer_gbm"] == {"max_iter": 500}


@pytest.mark.parametrize("edit, words", [
    (lambda config: config["train"].update(n_seeds="fifty"), "config key train.n_seeds: 'fifty' is not of type"),
    (lambda config: config.pop("split"), "top level: 'split' is a required property"),
    (lambda config: config["split"].update(fractions=[0.8, 0.1, 0.2]), "config key split.fractions"),
    (lambda config: config["tune"].update(colour="blue"), "config key tune: Additional properties"),
])
def test_load_config_refuses_in_one_line_naming_file_and_key(config, tmp_path, edit, words):
    from electrode_ml.config import load_config

    edit(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(InputError) as error:
        load_config(bad)
    assert words in str(error.value) and "\n" not in str(error.value)
    if "split.fractions" not in words:  # check_config's messages name the key, not the file
        assert str(bad) in str(error.value)


def test_load_config_refuses_a_missing_file_and_broken_yaml(tmp_path):
    from electrode_ml.config import load_config

    with pytest.raises(InputError, match="none.yaml is not a file"):
        load_config(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {n_seeds: 50\n")
    with pytest.raises(InputError) as error:
        load_config(broken)
    assert "broken.yaml is not valid YAML" in str(error.value) and "\n" not in str(error.value)


def test_the_trees_high_capacity_share_needs_their_capacity_weights(config):
    config["voltage_trees"]["capacity_weights"] = None
    with pytest.raises(InputError, match="voltage_trees.high_capacity_weight: .*capacity_weights, which is null"):
        check_config(config)
    config["voltage_trees"]["high_capacity_weight"] = None
    check_config(config)


@pytest.mark.parametrize("key, shipped", [("high_capacity_weight", 0.8), ("max_iter", 1000)])
def test_a_config_from_before_a_trees_setting_gets_the_shipped_value(config, key, shipped):
    assert config["voltage_trees"].pop(key) == shipped
    validate(config, SCHEMA)
    assert config["voltage_trees"][key] == shipped


def test_a_snapshot_folder_or_a_missing_snapshot_stops_a_real_run_before_any_job(tmp_path, config):
    """Snakemake takes a folder as an input and would start the run; the data job would fail only then."""
    folder = tmp_path / "mp_insertion_electrodes"
    folder.mkdir()
    (folder / "electrodes.csv").write_text("battery_id\n")
    config["results"] = str(tmp_path / "results")
    for snapshot, words in ((folder, f"{folder} is a folder; name the snapshot's CSV file in it (electrodes.csv)"),
                            (folder / "absent.csv", f"{folder / 'absent.csv'} not found")):
        config["data"].update(source="snapshot", snapshot=str(snapshot))
        run, output = real_run(config, tmp_path)
        assert run.returncode != 0 and f"config key data.snapshot: {words}" in output, output[-2000:]
        assert "Select jobs to execute" not in output and not (tmp_path / "results").exists()


def test_unlocking_or_linting_needs_no_snapshot(tmp_path, config):
    """After a crash, `snakemake --unlock` was refused while the data mount was gone: no job needs it."""
    config["results"] = str(tmp_path / "results")
    config["data"].update(source="snapshot", snapshot=str(tmp_path / "absent.csv"))
    for flag, words in (("--unlock", "Unlocked working directory"), ("--lint", "good condition")):
        run, output = real_run(config, tmp_path, flag)
        assert run.returncode == 0 and words in output, output[-2000:]
    run, output = real_run(config, tmp_path, "-n")  # a dry run plans the data job: still refused
    assert run.returncode != 0 and "absent.csv not found" in output


def test_a_download_run_needs_no_snapshot(config, monkeypatch):
    from electrode_ml.config import snapshot_input

    config["data"].update(source="mp_api", snapshot="/nowhere/snapshot.csv")
    monkeypatch.setenv("MP_API_KEY", "x" * 32)
    assert snapshot_input(config) == []


def test_results_naming_a_file_is_refused(tmp_path, config):
    """results: config.yaml ended the DAG build in a NotADirectoryError traceback."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    config["results"] = str(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"^config key results: .*notes.txt is a file; name a folder"):
        check_config(config)


def test_gpus_asked_for_jobs_that_train_on_the_cpu_are_refused(config):
    """profiles/slurm gave every network job a GPU whatever train.device said, and read any value of its
    switch but "0" as 1."""
    from snakemake.resources import Resource

    asked = {"train": {"gpu": Resource("gpu", 1), "mem_mb": Resource("mem_mb", 4000)},
             "tune": {"gpu": Resource("gpu", 1)}, "data": {"mem_mb": Resource("mem_mb", 100)}}
    config["train"]["device"] = "cpu"
    with pytest.raises(InputError, match=r"^config key train.device: cpu, but set-resources asks a "
                                         r"GPU for every train, tune job; export ELECTRODE_ML_GPU_PER_JOB=0"):
        check_gpu_requests(config, asked, environ={})
    check_gpu_requests(config, {"train": {"gpu": Resource("gpu", 0)}, "tune": {"gpu": 0}}, environ={})
    config["train"]["device"] = "auto"  # a GPU cluster: the jobs see the GPU they asked for
    check_gpu_requests(config, asked, environ={})
    with pytest.raises(InputError, match=r"^environment variable ELECTRODE_ML_GPU_PER_JOB='false': write 0"):
        check_gpu_requests(config, {}, environ={"ELECTRODE_ML_GPU_PER_JOB": "false"})


def test_a_gres_gpu_counts_as_a_gpu_and_cuda_jobs_sent_without_one_are_refused(config):
    """The README's form for gres clusters asks its GPU by gres (gpu: 0), which the check read as none; and
    train.device: cuda with ELECTRODE_ML_GPU_PER_JOB=0 sent every network job to a node without a GPU.
    Snakemake keeps set-resources text as an expression of the job, whose value the check cannot ask for."""
    from snakemake.cli import parse_set_resources

    def resources(*settings: str) -> dict:
        return parse_set_resources(list(settings))

    by_gres = resources("train:gpu=0", "train:gres=gpu:a100:1", "tune:gres=\"gpu:1\"")
    config["train"]["device"] = "cpu"
    with pytest.raises(InputError, match=r"^config key train.device: cpu, but set-resources asks a GPU for every "
                                         r"train, tune job; export ELECTRODE_ML_GPU_PER_JOB=0"):
        check_gpu_requests(config, by_gres, environ={})
    check_gpu_requests(config, resources("train:gres=tmpfs:10G", "tune:gres=", "data:gpu=0"), environ={})
    check_gpu_requests(config, resources("train:gpu=1 if attempt > 1 else 0"), environ={})  # the job decides

    none = resources("train:gpu=0", "train:mem_mb=4000", "tune:gpu=0", "tune:gres=", "data:gpu=0")
    config["train"]["device"] = "cuda"
    with pytest.raises(InputError, match=r"^config key train.device: cuda, but set-resources asks no GPU for the "
                                         r"train, tune jobs, which would fail on nodes without one; unset "
                                         r"ELECTRODE_ML_GPU_PER_JOB"):
        check_gpu_requests(config, none, environ={"ELECTRODE_ML_GPU_PER_JOB": "0"}, remote=True)
    check_gpu_requests(config, none, environ={}, remote=False)  # one host: its jobs see its GPUs
    # the rules' own gpu=1 where set-resources give none, a gres naming a GPU, a count the job decides
    asked = resources("train:mem_mb=4000", "tune:gres=", "timing:gres=gpu:1", "group_evaluation:gpu=0",
                      "group_evaluation:gres=gpu", "feature_contribution:gpu=attempt - 1")
    check_gpu_requests(config, asked, environ={}, remote=True, torch_version="2.13.0")
    # a CPU-only torch that the cluster's jobs would run: each of them waited for a GPU node and failed there
    with pytest.raises(InputError, match=r"^config key train.device: cuda, but this environment's torch "
                                         r"\(2.13.0\+cpu\) is no CUDA build, and every network job would run it"):
        check_gpu_requests(config, asked, environ={}, remote=True, torch_version="2.13.0+cpu")
    # a conda deployment: the jobs run that environment's torch, not this one
    check_gpu_requests(config, asked, environ={}, remote=True, torch_version="2.13.0+cpu", jobs_share_this_torch=False)
    config["train"]["device"] = "auto"  # a CPU cluster: auto trains there on the CPU
    check_gpu_requests(config, none, environ={}, remote=True)


@pytest.mark.skipif(torch_sees_a_gpu(), reason="the check passes where torch sees a GPU")
def test_cuda_without_a_gpu_stops_a_real_run_before_any_job(tmp_path, config):
    """train.device: cuda on a CPU-only host ran data, split and features, then failed in the first tuning job."""
    config["train"]["device"] = "cuda"
    config["results"] = str(tmp_path / "results")
    config["data"]["snapshot"] = str((REPO / config["data"]["snapshot"]).resolve())
    run, output = real_run(config, tmp_path)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].startswith("electrode-ml: error: config key train.device: cuda, but "), output[-2000:]
    assert not (tmp_path / "results").exists()
    assert real_run(config, tmp_path, "-n")[0].returncode == 0  # a dry run (a login node's) checks no GPU


def test_config_yaml_is_in_the_schemas_order_and_a_merged_config_is_put_back_in_it(config):
    """The order is what Snakemake's params record: config.yaml's own must come out unchanged, so that
    finished results stay current, and a --configfile's sections come out in the same order."""
    from electrode_ml.config import in_schema_order

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    ordered = copy.deepcopy(config)
    in_schema_order(ordered, schema)
    assert repr(ordered) == repr(config)
    merged = {section: dict(reversed(list(value.items()))) if isinstance(value, dict) else value
              for section, value in reversed(list(config.items()))}
    in_schema_order(merged, schema)
    assert repr(merged) == repr(config)


def test_whole_numbers_in_number_fields_become_floats_and_integers_stay(config):
    """config.yaml writes its number fields as floats; a config that writes 2 for 2.0 is made the same."""
    from electrode_ml.config import validate_config

    validated = copy.deepcopy(config)
    validate_config(validated)
    assert repr(validated) == repr(config)  # config.yaml is already in canonical form
    config["screen"]["na"]["voltage"] = 2
    config["data"]["voltage_window"] = [-1, 7]
    config["train"]["huber_delta"] = {"model1": 1}
    validate_config(config)
    assert repr(config["screen"]["na"]["voltage"]) == "2.0"
    assert repr(config["data"]["voltage_window"]) == "[-1.0, 7.0]"
    assert repr(config["train"]["huber_delta"]["model1"]) == "1.0"
    assert repr(config["train"]["n_seeds"]) == repr(validated["train"]["n_seeds"]) == "50"  # integers untouched
    assert config["features"]["space_groups"] is False or config["features"]["space_groups"] is True


def test_a_models_feature_settings_leave_out_what_its_featuriser_never_reads(config):
    from electrode_ml.config import model_feature_settings

    features = {**config["features"], "space_groups": False}
    assert "dft_scaling" in model_feature_settings(features, "model2")
    assert "dft_scaling" not in model_feature_settings(features, "model1")
    assert "dft_scaling" not in model_feature_settings(features, "model1_redox")
    assert "space_group_variance" not in model_feature_settings(features, "model2")
    assert "space_group_variance" in model_feature_settings({**features, "space_groups": True}, "model1")


@pytest.mark.parametrize("device, visible, version, gpus", [
    ("auto", "0", "2.13.0", 1), ("auto", "0,1", "2.13.0+cu128", 1),
    ("auto", "0", "2.13.0+cpu", 0),  # a GPU host with the CPU wheel: the jobs train on the CPU, no GPU booked
    ("auto", "", "2.13.0", 0), ("cpu", "0", "2.13.0", 0), ("cuda", "0", "2.13.0+cpu", 1),
])
def test_a_job_books_a_gpu_only_where_its_torch_can_use_one(device, visible, version, gpus):
    from electrode_ml.config import gpu_per_job

    config = {"train": {"device": device}}
    assert gpu_per_job(config, {"CUDA_VISIBLE_DEVICES": visible}, torch_version=version) == gpus


@pytest.mark.parametrize("devices, gpus", [([], 0), (["/dev/nvidia0"], 1), (["/dev/dxg"], 1)])  # dxg: WSL2's GPUs
def test_a_gpu_is_seen_by_its_device_files_where_cuda_visible_devices_is_unset(monkeypatch, devices, gpus):
    from electrode_ml import config as settings

    monkeypatch.setattr(settings.glob, "glob", lambda pattern: [path for path in devices if "nvidia" in path])
    monkeypatch.setattr(settings.os.path, "exists", lambda path: path in devices)
    assert settings.gpu_per_job({"train": {"device": "auto"}}, {}, torch_version="2.13.0") == gpus


def test_the_ions_are_a_set_and_the_tunings_patience_counts_only_for_its_own_trials(config):
    """Both are recorded as the rules' params text: [Y, Li] for [Li, Y] reran every job, and a patience
    the tuning never read (tune.epochs null) reran 166 of 175."""
    from electrode_ml.config import tune_settings, validate_config

    config["data"]["ions"] = ["Y", "Mg", "Li"]
    validate_config(config)
    assert config["data"]["ions"] == ["Li", "Mg", "Y"]
    assert config["tune"]["epochs"] is None and "patience" not in tune_settings(config["tune"])
    assert tune_settings({**config["tune"], "epochs": 100})["patience"] == config["tune"]["patience"]


def test_the_schema_names_the_models_and_ions_the_library_knows():
    """Four lists of the same names: a model added to models.py would be refused by the schema, and a
    network model missing from the Huber pattern could not be given a delta."""
    from electrode_ml.models import FEATURE_SETS, KNOWN_MODELS
    from electrode_ml.schema import WORKING_IONS

    properties = yaml.safe_load(Path(SCHEMA).read_text())["properties"]
    assert properties["models"]["items"]["enum"] == list(KNOWN_MODELS)
    assert properties["data"]["properties"]["ions"]["items"]["enum"] == list(WORKING_IONS)
    huber = properties["train"]["properties"]["huber_delta"]["patternProperties"]
    assert list(huber) == [f"^({'|'.join(FEATURE_SETS)})$"]


def test_a_snapshot_path_the_system_refuses_is_one_line(tmp_path):
    from electrode_ml.config import check_snapshot

    with pytest.raises(InputError, match=r"^config key data.snapshot: a{80}\.\.\.: File name too long$"):
        check_snapshot("a" * 300 + ".csv")


@pytest.mark.parametrize("key, value", [(("train", "n_seeds"), 100000), (("tune", "trials"), 10**30),
                                        (("train", "epochs"), 10**30), (("tune", "units"), [32, 10**9]),
                                        (("evaluation", "group_seeds"), 5000)])
def test_counts_past_any_use_are_refused_before_the_dag_fills_the_memory(config, key, value):
    """train.n_seeds: 100000 ended a dry run in a MemoryError after 151 s; 10^7 took 23 GB."""
    config[key[0]][key[1]] = value
    with pytest.raises(InputError, match=rf"^config key {key[0]}\.{key[1]}(\.1)?: .* is greater than the maximum of"):
        check_schema(config)


def test_a_null_nested_in_the_command_line_gets_the_hint(config):
    """`--config 'train={patience: null}'` passes the null as text: "'null' is not of type 'integer',
    'null'" read as a contradiction."""
    config["train"]["patience"] = "null"
    with pytest.raises(InputError, match=r"nested in --config, which passes nested values as text; in a --configfile "
                                         r"write null\)$"):
        check_schema(config)


def test_a_config_file_that_is_no_text_is_one_line(tmp_path):
    from electrode_ml.config import load_config

    path = tmp_path / "config.yaml"
    path.write_bytes(b"results: \xff\xfe\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))} is not UTF-8 text \(byte 9\)$"):
        load_config(path)


def test_a_partial_config_given_to_a_tool_says_why_it_is_refused(tmp_path):
    """A --configfile for Snakemake is merged over config.yaml; the tools read a whole configuration."""
    from electrode_ml.config import load_config

    path = tmp_path / "override.yaml"
    path.write_text("train:\n  n_seeds: 3\n")
    with pytest.raises(InputError, match=r"is a required property \(this reads a whole configuration, such as a "
                                         r"run's config.yaml, not a partial one to merge over it\)$"):
        load_config(path)
    whole = tmp_path / "config.yaml"
    whole.write_text((REPO / "config.yaml").read_text())
    assert load_config(whole)["train"]["n_seeds"] == 50


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    """YAML keeps the last of a key given twice: a pasted second `train:` section replaced the first."""
    from electrode_ml.config import load_config

    twice = tmp_path / "twice.yaml"
    twice.write_text((REPO / "config.yaml").read_text() + "\ntrain:\n  n_seeds: 3\n")
    line = len((REPO / "config.yaml").read_text().splitlines()) + 2
    message = rf"^{re.escape(str(twice))}: key 'train' is given twice \(line {line}\); YAML keeps the last one$"
    with pytest.raises(InputError, match=message):
        load_config(twice)
    # the workflow reads its --configfile so too, before any job
    partial = tmp_path / "partial.yaml"
    partial.write_text(f"results: {tmp_path / 'results'}\ntune:\n  trials: 3\n  trials: 30\n")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(partial), "--cores", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        f"electrode-ml: error: {partial}: key 'trials' is given twice (line 4); YAML keeps the last one")
    assert not (tmp_path / "results").exists()
