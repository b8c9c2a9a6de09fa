"""The workflow configuration's checks, each refusal one line naming the key: the JSON schema's, and
those a schema cannot express."""

from __future__ import annotations

import ast
import glob
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from electrode_ml.errors import InputError
from electrode_ml.models import is_physics_model
from electrode_ml.schema import WORKING_IONS

# The default for the tools outside Snakemake (the package is installed editable from the repository);
# the workflow passes the schema beside its own Snakefile.
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last, so a
    second `train:` section (a pasted block) silently replaced the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                    "YAML keeps the last one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, a key given twice in one mapping refused in one line naming it."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as error:
        raise InputError(f"{path}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is not UTF-8 text (byte {error.start})") from None


def load_config(path: Path) -> dict:
    """A configuration file as the Snakefile sees it: schema-checked, the schema's defaults filled in,
    then ``check_config``; for the tools that read a run's config.yaml outside Snakemake."""
    if not path.is_file():
        raise InputError(f"--config {path} is not a file")
    config = read_yaml(path)
    try:
        validate_config(config)
    except InputError as error:
        # a file written for Snakemake's --configfile, which merges it over config.yaml; this does not
        partial = str(error).startswith("config top level: ") and "is a required property" in str(error)
        raise InputError(f"{path}: {error}" + (" (this reads a whole configuration, such as a run's config.yaml, "
                                               "not a partial one to merge over it)" if partial else "")) from None
    return config


def validate_config(config: dict, schema: Path = SCHEMA) -> None:
    """The Snakefile's and the tools' one check of a configuration: ``check_schema``, the schema's
    defaults filled in (optional sections of older configs), then ``check_config``."""
    from snakemake.utils import validate  # imported here: only the workflow and the measuring tools need it

    check_schema(config, schema)
    validate(config, str(schema))  # cannot fail after check_schema; it fills in the defaults
    check_config(config)
    schema = yaml.safe_load(Path(schema).read_text())
    in_schema_order(config, schema)
    numbers_as_floats(config, schema)
    # a set, recorded as text in the data rule's params: [Y, Li] in place of [Li, Y] reran all 175 jobs
    config["data"]["ions"] = sorted(config["data"]["ions"], key=WORKING_IONS.index)


def in_schema_order(config: dict, schema: dict) -> None:
    """Put every section's keys in the schema's order (config.yaml's), in place.

    Snakemake records a rule's params by their text, and merges config.yaml into a ``--configfile``,
    so a section the file names had its keys first: restating ``split.seed: 42`` reran 174 jobs.
    """
    properties = schema.get("properties", {})
    rank = {key: index for index, key in enumerate(properties)}
    for key in sorted(config, key=lambda key: rank.get(key, len(rank))):  # free keys keep their order
        config[key] = config.pop(key)
    for key, value in config.items():
        if isinstance(value, dict) and key in properties:
            in_schema_order(value, properties[key])


def numbers_as_floats(value, schema: dict):
    """Write every whole number in a ``number`` field as a float (2 -> 2.0), in place; returns ``value``.

    Params are recorded as text, so ``screen.na.voltage: 2`` in place of config.yaml's ``2.0`` reran
    the screen (and ``voltage_window: [-1, 7]`` every job) for the same thresholds.
    """
    if isinstance(value, dict):
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            matching = schema.get("properties", {}).get(key) or next(
                (sub for pattern, sub in patterns.items() if re.search(pattern, str(key))), None)
            if matching:
                value[key] = numbers_as_floats(item, matching)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [numbers_as_floats(item, schema["items"]) for item in value]
    elif isinstance(value, int) and not isinstance(value, bool):
        kinds = schema.get("type", [])
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "number" in kinds and "integer" not in kinds:
            return float(value)
    return value


# "integer" as YAML writes it: JSON Schema counts 500.0 as an integer, and such a float then reached
# range() at parse time (a traceback) or a job (train.epochs, tune.trials: failing only once running).
StrictValidator = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)))


def check_schema(config, schema: Path = SCHEMA) -> None:
    """Raise InputError, one line naming the key, at the schema's most relevant complaint (best_match)."""
    error = best_match(StrictValidator(yaml.safe_load(schema.read_text())).iter_errors(config))
    if error is None:
        return
    where = "config key " + ".".join(map(str, error.absolute_path)) if error.absolute_path else "config top level"
    raise InputError(f"{where}: {' '.join(error.message.split())}{_hint(error)}")


def _hint(error) -> str:
    """How to write the number the schema wanted, when YAML read the value as text or as a float."""
    if error.validator != "type":
        return ""
    value, wanted = error.instance, error.validator_value
    wanted = wanted if isinstance(wanted, list) else [wanted]
    if isinstance(value, float) and value.is_integer() and "integer" in wanted:
        return f" (write {int(value)})"
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        as_yaml = yaml.safe_load(text)
    except yaml.YAMLError:
        as_yaml = None
    kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
    if any(isinstance(as_yaml, kinds[kind]) and (kind == "boolean") == isinstance(as_yaml, bool)
           for kind in wanted if kind in kinds):
        return (" (text: quoted, or nested in --config, which passes nested values as text; in a --configfile "
                f"write {text})")
    # PyYAML (YAML 1.1) reads a float only with a decimal point, and an exponent only with its sign:
    # 1e-4 and 1.0e4 are text, 1.0e-4 and 1.0e+4 numbers.
    exponent = re.fullmatch(r"([+-]?\d+)(?:\.(\d*))?[eE]([+-]?)(\d+)", text)
    if exponent and "number" in wanted:
        whole, fraction, sign, power = exponent.groups()
        return f" (YAML reads {text} as text; write {whole}.{fraction or 0}e{sign or '+'}{power})"
    return ""


# The largest seed numpy's and scikit-learn's generators take.
MAX_SEED = 2**32 - 1


def check_config(config: dict) -> None:
    """Raise InputError naming the key when values are individually valid but inconsistent."""
    for key, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"config key {key}: {value} is not a finite number")
    check_path_text("results", str(config["results"]))
    check_path_text("data.snapshot", str(config["data"]["snapshot"]))
    results = Path(str(config["results"]))
    for folder in (results, *results.parents):
        if _checked(lambda: folder.exists() and not folder.is_dir(), "results", folder):
            raise InputError(f"config key results: {folder} is a file; name a folder (new or existing)")
    train = config["train"]
    last_seed = train["first_seed"] + max(train["n_seeds"], config["analysis"]["contribution_seeds"],
                                          config["evaluation"]["group_seeds"]) - 1
    for key, seed in (("split.seed", config["split"]["seed"]), ("tune.seed", config["tune"]["seed"]),
                      ("train.first_seed", last_seed)):
        if seed > MAX_SEED:
            raise InputError(f"config key {key}: seeds go up to {seed}, over {MAX_SEED}, the largest numpy and "
                             "scikit-learn take")
    fractions = config["split"]["fractions"]
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InputError(f"config key split.fractions: {fractions} sum to {sum(fractions):g}, not 1")
    if config["evaluation"]["group_seeds"] == 1:
        raise InputError("config key evaluation.group_seeds: 1 network gives no spread; use 0 (skip) or at least 2")
    physics_models = [model for model in config["models"] if is_physics_model(model)]
    if physics_models and not config["data"]["exact_formulas"]:
        raise InputError(f"config key data.exact_formulas: false keeps MP's rounded ion counts (Li1.33 for 4/3, Li1 "
                         f"for Li10), from which the stoichiometric capacity of {' and '.join(physics_models)} is off "
                         "for dozens of snapshot rows while its interval says round-off; set it true, or leave the "
                         "physics models out of `models`")
    trees = config["voltage_trees"]
    if trees["high_capacity_weight"] is not None and trees["capacity_weights"] is None:
        raise InputError("config key voltage_trees.high_capacity_weight: its bound is the upper of "
                         "voltage_trees.capacity_weights, which is null; set both or neither")
    for key in ("data.voltage_window", "tune.lr", "tune.units", "tune.dropout", "voltage_trees.capacity_weights"):
        section, name = key.split(".")
        if config[section][name] is None:
            continue
        low, high = config[section][name]
        if not low < high:
            raise InputError(f"config key {key}: lower bound {low} is not below upper bound {high}")


def check_path_text(key: str, text: str) -> None:
    """Refuse a path that would not be the one meant: Snakemake takes it as written."""
    if re.search(r"[{}]|^~|\$", text):
        raise InputError(f"config key {key}: {text!r} would be taken as written (no ~ or $ expansion; braces "
                         "are Snakemake wildcards); write the path itself")
    if text != text.strip():
        raise InputError(f"config key {key}: {text!r} begins or ends with white space, which would be part of "
                         "the name; remove it")
    if "\0" in text:
        raise InputError(f"config key {key}: {text!r} holds a NUL character, which no path can")


def _checked(look: Callable[[], bool], key: str, path: Path) -> bool:
    """``look()``, a question about ``path`` the system may refuse (a name too long), as one line."""
    try:
        return look()
    except OSError as error:
        raise InputError(f"config key {key}: {str(path)[:80]}{'...' if len(str(path)) > 80 else ''}: "
                         f"{error.strerror or error}") from None


def _leaves(config, path: str = ""):
    """(dotted key, value) for every value in a nested configuration."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    if not items:
        yield path, config
    for key, value in items:
        yield from _leaves(value, f"{path}.{key}" if path else str(key))


def seed_range(train: dict, count: int) -> list[int]:
    """``count`` seeds from ``train.first_seed`` on: the analyses that train networks of their own
    start where the ensemble does, so that their seeds are the train jobs' first ones."""
    return list(range(train["first_seed"], train["first_seed"] + int(count)))


def seeds(config: dict) -> list[int]:
    return seed_range(config["train"], config["train"]["n_seeds"])


def contribution_seeds(config: dict) -> list[int]:
    """The feature contribution's seeds; those the train jobs also train serve as its full networks."""
    return seed_range(config["train"], config["analysis"]["contribution_seeds"])


def group_seeds(config: dict) -> list[int]:
    """The framework-grouped evaluation's seeds: the train jobs' first ``evaluation.group_seeds``."""
    return seed_range(config["train"], config["evaluation"]["group_seeds"])


def model_train_settings(train: dict, model: str) -> dict:
    """The ``train`` section as the jobs of one network model read it: only that model's Huber delta.

    A rule's params are Snakemake's record of what its outputs depend on; the whole section made a
    change to model1_redox's delta rerun model1's and model2's 100 train jobs for identical networks,
    and more seeds (``n_seeds``, ``first_seed``: which jobs there are, not what one computes) every
    tuning and every finished training.
    """
    deltas = train["huber_delta"]
    settings = {key: value for key, value in train.items() if key not in ("n_seeds", "first_seed")}
    # null is an unlisted model's MSE: the only way a --configfile can take config.yaml's delta away
    return {**settings, "huber_delta": {model: deltas[model]} if deltas.get(model) is not None else {}}


def tune_settings(tune: dict) -> dict:
    """The ``tune`` section as its jobs read it (why: :func:`model_train_settings`): ``patience`` only
    for trials of their own length (``epochs`` a number); the training recipe's trials have the
    ``train`` section's. A change to it reran 166 of 175 jobs for the same networks."""
    return {key: value for key, value in tune.items() if key != "patience" or tune["epochs"] is not None}


def model_feature_settings(features: dict, model: str) -> dict:
    """The ``features`` section as one network model's featuriser reads it (why: model_train_settings):
    the DFT scaling only for feature set 2, the space groups' PCA variance only with that block."""
    from electrode_ml.models import uses_dft

    unread = ({"dft_scaling"} if not uses_dft(model) else set()) | (
        {"space_group_variance"} if not features["space_groups"] else set())
    return {key: value for key, value in features.items() if key not in unread}


def cuda_visible(environ=os.environ) -> bool:
    """Whether this host shows an NVIDIA GPU, checked without importing torch in the scheduler. WSL2
    shows its GPUs as /dev/dxg and no /dev/nvidia*: there `auto` booked no GPU, and jobs beyond the
    GPUs waited for one holding a core each instead of `--resources gpu=K` holding them back."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    devices = os.path.join(os.sep, "dev")
    return bool(glob.glob(os.path.join(devices, "nvidia[0-9]*"))) or os.path.exists(os.path.join(devices, "dxg"))


def installed_torch() -> str | None:
    """The installed torch's version, read without importing it; None where there is none."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def torch_has_cuda(torch_version: str | None = None) -> bool:
    """Whether the installed torch is a CUDA build, read from its version without importing it: PyTorch's
    CPU wheels (what `make venv` installs from a local wheel or TORCH_INDEX) end in ``+cpu``."""
    torch_version = torch_version or installed_torch()
    return torch_version is not None and not torch_version.endswith("+cpu")


def gpu_per_job(config: dict, environ=os.environ, torch_version: str | None = None) -> int:
    """GPUs a training or tuning job declares: 1 on CUDA, so ``--resources gpu=K`` runs K at a time.
    With ``auto``, a GPU that a CPU build of torch cannot use books none: such jobs train on the CPU,
    and holding a GPU each ran them K at a time beside idle cores."""
    device = config["train"]["device"]
    return int(device == "cuda" or (device == "auto" and cuda_visible(environ) and torch_has_cuda(torch_version)))


# The rules whose jobs run networks and declare ``gpu=GPU_PER_JOB`` (tests/test_profiles.py holds this
# list to the rule files).
NETWORK_RULES = ("feature_contribution", "group_evaluation", "timing", "train", "tune")


def check_gpu_requests(config: dict, set_resources: dict, environ=os.environ, remote: bool = False,
                       torch_version: str | None = None, jobs_share_this_torch: bool = True) -> None:
    """Refuse GPUs a profile asks for jobs that will not use them, and none for jobs that need one.

    profiles/slurm reads ``ELECTRODE_ML_GPU_PER_JOB`` before the config exists, so only this check sees
    both: ``train.device: cpu`` there still held a GPU per network job, ``=false`` meant 1, and
    ``train.device: cuda`` with ``=0`` sent every network job to a node without a GPU, to fail there one
    by one. A GPU is asked by ``gpu`` or by a ``gres`` naming one (the README's form for gres clusters);
    a setting that depends on the job (an expression of ``attempt``) is left to the job.
    ``remote``: the jobs run elsewhere (a cluster), so a job without a GPU of its own has none; there,
    ``train.device: cuda`` with a CPU-only torch (``torch_version``, this environment's, which the jobs
    run unless ``jobs_share_this_torch`` is false: a conda deployment) is refused too, since every
    network job would wait for a GPU node and fail on it.
    """
    switch = environ.get("ELECTRODE_ML_GPU_PER_JOB")
    if switch is not None and switch not in ("0", "1"):
        raise InputError(f"environment variable ELECTRODE_ML_GPU_PER_JOB={switch!r}: write 0 (no GPU per job) or 1")
    device = config["train"]["device"]
    if device == "cpu":
        asking = sorted(rule for rule, resources in set_resources.items() if _asks_gpu(resources, own_gpu=False) is True)
        if asking:
            raise InputError(f"config key train.device: cpu, but set-resources asks a GPU for every "
                             f"{', '.join(asking)} job; export ELECTRODE_ML_GPU_PER_JOB=0 for profiles/slurm "
                             "(or take the GPU out of their gpu and gres)")
    elif device == "cuda" and remote:
        without = sorted(rule for rule, resources in set_resources.items()
                         if rule in NETWORK_RULES and _asks_gpu(resources, own_gpu=True) is False)
        if without:
            raise InputError(f"config key train.device: cuda, but set-resources asks no GPU for the "
                             f"{', '.join(without)} jobs, which would fail on nodes without one; unset "
                             "ELECTRODE_ML_GPU_PER_JOB (or export it as 1) for profiles/slurm, give them a gpu or "
                             "gres, or set train.device: auto or cpu")
        version = torch_version or installed_torch()
        if jobs_share_this_torch and not torch_has_cuda(version):
            raise InputError(f"config key train.device: cuda, but this environment's torch ({version or 'none'}) is "
                             "no CUDA build, and every network job would run it on its GPU node, and fail: install "
                             "a CUDA build of torch 2.13.0 (make venv TORCH_INDEX=<PyTorch's CUDA index>) or set "
                             "train.device: auto or cpu")


def _asks_gpu(resources: dict, own_gpu: bool) -> bool | None:
    """Whether a rule's jobs ask a GPU, by ``gpu`` above 0 or a ``gres`` such as "gpu:a100:1"; where its
    set-resources give no ``gpu``, the rule's own (``own_gpu``) holds. None: it depends on the job."""
    gpu = _setting(resources["gpu"]) if "gpu" in resources else own_gpu
    gres = _setting(resources["gres"]) if "gres" in resources else None
    if _UNKNOWN in (gpu, gres):
        return None
    by_gres = isinstance(gres, str) and any(item.split(":")[0].strip() == "gpu" for item in gres.split(","))
    return by_gres or gpu is True or (isinstance(gpu, (int, float)) and not isinstance(gpu, bool) and gpu > 0)


_UNKNOWN = object()


def _setting(resource):
    """One set-resources value as written. Snakemake keeps a profile's or a command line's text as a
    Python expression it evaluates per job (asking its value before raises), and takes text that is no
    Python, such as gpu:a100:1, as a string: read alike here, and an expression of the job is unknown."""
    if not hasattr(resource, "is_evaluable"):
        return resource  # a plain number or string (the profile's `?` values, tests)
    if not resource.is_evaluable():
        return resource.value
    text = str(resource.raw)
    try:
        return ast.literal_eval(text)
    except SyntaxError:
        return text
    except ValueError:  # no literal: a bare word is Snakemake's string too (NameError), else the job decides
        return text if isinstance(ast.parse(text.strip(), mode="eval").body, ast.Name) else _UNKNOWN


def resolve_source(source: str, environ=os.environ) -> str:
    """auto -> mp_api when MP_API_KEY is set, else the snapshot."""
    if source == "auto":
        return "mp_api" if environ.get("MP_API_KEY") else "snapshot"
    if source == "mp_api" and not environ.get("MP_API_KEY"):
        raise InputError("data.source is mp_api but MP_API_KEY is not set in the environment")
    return source


def snapshot_input(config: dict) -> str | list:
    """The snapshot is a rule input only when it is the source, so a download run does not need it."""
    return config["data"]["snapshot"] if resolve_source(config["data"]["source"]) == "snapshot" else []


def check_snapshot(snapshot: str) -> None:
    """Refuse a snapshot path that is a folder or no file, before any job: Snakemake takes a folder as
    an input, and the data job would only fail once the run had started."""
    path = Path(snapshot)  # relative to Snakemake's working directory
    if _checked(path.is_dir, "data.snapshot", path):
        inside = ", ".join(sorted(csv.name for csv in path.glob("*.csv"))) or "no CSV files"
        raise InputError(f"config key data.snapshot: {path} is a folder; name the snapshot's CSV file in it ({inside})")
    if not _checked(path.is_file, "data.snapshot", path):
        raise InputError(f"config key data.snapshot: {path} not found")
