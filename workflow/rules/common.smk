# Shared by every rule file: the output root, the model and seed lists, config checks.
import os
import sys
from pathlib import Path

# The library beside this Snakefile, for this process and for the jobs it starts (they inherit the
# environment): the package installed in the environment may be another checkout's, and then the
# config checks would run one version of the code and the jobs another.
LIBRARY = str(Path(workflow.basedir) / "src")
sys.path.insert(0, LIBRARY)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [LIBRARY, os.environ.get("PYTHONPATH")])))

from electrode_ml import contribution
from electrode_ml.code_version import libraries_version, script_code_version
from electrode_ml.config import (check_gpu_requests, check_snapshot, contribution_seeds, gpu_per_job, group_seeds,
                                 model_feature_settings, model_train_settings, read_yaml, seeds, snapshot_input,
                                 tune_settings, validate_config)
from electrode_ml.errors import InputError
from electrode_ml.models import (FEATURE_SETS, KNOWN_MODELS, PHYSICS_BASES, base_model, is_physics_model,
                                 uses_voltage_trees, variants_of, voltage_tree_settings)
from electrode_ml.runner import SNAKEMAKE, snakemake_identity

# Whom the jobs watch, should this process be killed (runner.snakemake_to_watch)
os.environ[SNAKEMAKE] = snakemake_identity()

NO_JOB_FLAGS = {"--unlock", "--lint", "--cleanup-metadata", "--cm", "--list-rules", "--list", "-l",
                "--list-target-rules", "--lt", "--cleanup-shadow"}

try:
    for path in workflow.configfiles:  # Snakemake's YAML reading keeps the last of a key given twice
        read_yaml(path)
    validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
    SNAPSHOT = snapshot_input(config)
    if workflow.is_main_process:  # a job submitted to a cluster node never reads the snapshot
        # Snakemake tells a Snakefile nothing of its mode: these flags run no job, and the snapshot's
        # mount may be gone when a user unlocks after a crash
        if SNAPSHOT and not NO_JOB_FLAGS & set(sys.argv):
            check_snapshot(SNAPSHOT)
        check_gpu_requests(config, workflow.resource_settings.overwrite_resources)
except InputError as error:
    # Any exception raised here, WorkflowError included, Snakemake prints with the file, the line
    # and a traceback (snakemake.exceptions.format_exception_to_string). SystemExit is no Exception:
    # it passes Snakemake's handlers, and Python prints its message alone on stderr and exits 1.
    sys.exit(f"electrode-ml: error: {error}")

RESULTS = config["results"].rstrip("/")
MODELS = config["models"]
# Physics models reuse the networks of their base model; only base models are featurised and trained.
BASE_MODELS = sorted({base_model(model) for model in MODELS})
# The wildcard values of the featurise, tune and train rules: the models with networks of their own.
NETWORK_MODELS = "|".join(FEATURE_SETS)
PHYSICS_MODELS = [model for model in MODELS if is_physics_model(model)]
# Physics models whose learned voltage blends networks with gradient-boosted trees (trees.py).
VOLTAGE_TREE_MODELS = [model for model in MODELS if uses_voltage_trees(model)]
GROUP_MODELS = BASE_MODELS if config["evaluation"]["group_seeds"] else []
SEEDS = seeds(config)
CONTRIBUTION_MODEL = contribution.MODEL
# The contribution's full networks that train jobs already train (the model's first seeds).
CONTRIBUTION_TRAINED_SEEDS = [seed for seed in contribution_seeds(config) if seed in SEEDS]
# On 2 cores a 12-minute job that lands last runs beside an idle core, and Snakemake picks among
# ready jobs of one priority by input size: the train jobs' feature tables outweigh a features job's
# inputs. The long jobs (tuning, grouped evaluation, feature contribution), the train jobs the
# contribution waits for and the feature tables every one of them reads go first (a priority does not
# reach a job's inputs: without it, model2's features waited behind 100 train jobs), so that the
# short train jobs fill the end of the run.
LONG_JOB_PRIORITY = 1
# Training and tuning jobs each claim one GPU when the workflow runs on CUDA (see devices.py).
GPU_PER_JOB = gpu_per_job(config)

# Each rule's `code` param, by script name: its jobs rerun when the library code their script runs
# changes (code_version.py; the profiles turn off Snakemake's own trigger on the scripts' file times),
# or when Python or a numerical library in the environment changes version.
LIBRARIES_VERSION = libraries_version()
CODE_VERSION = {script.stem: f"{script_code_version(script)}-{LIBRARIES_VERSION}"
                for script in (Path(workflow.basedir) / "workflow" / "scripts").glob("*.py")}


onstart:
    # Snakemake names the executor to a Snakefile only once it runs (workflow.local_exec is True while
    # the Snakefile is read): a cluster's network jobs given no GPU are refused here, before submission.
    if not workflow.local_exec:
        try:
            # under a conda deployment the jobs run the environment's own torch, not this one
            check_gpu_requests(config, workflow.resource_settings.overwrite_resources, remote=True,
                               jobs_share_this_torch=not workflow.deployment_settings.deployment_method)
        except InputError as error:
            sys.exit(f"electrode-ml: error: {error}")
    # train.device: cuda where torch sees no GPU: one line before the first job, not a failure of the
    # first tuning once data, split and features have run. Only where the network jobs run here: a login
    # node has no GPU, its cluster jobs do (and Snakemake runs no onstart for a dry run).
    if config["train"]["device"] == "cuda" and workflow.local_exec and any(
            job.resources.get("gpu", 0) for job in workflow.dag.needrun_jobs()):
        from electrode_ml.devices import resolve_device  # imports torch: only for this check
        try:
            resolve_device("cuda")
        except InputError as error:
            sys.exit(f"electrode-ml: error: {error}")
