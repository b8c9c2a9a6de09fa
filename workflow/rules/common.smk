# Shared by every rule file: the output root, the model and seed lists, config checks.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from electrode_ml.config import check_config, gpu_per_job, seeds, snapshot_input
from electrode_ml.errors import InputError

try:
    check_config(config)
    SNAPSHOT = snapshot_input(config)
except InputError as error:
    raise WorkflowError(str(error))

RESULTS = config["results"].rstrip("/")
MODELS = config["models"]
SEEDS = seeds(config)
# Training and tuning jobs each claim one GPU when the workflow runs on CUDA (see devices.py).
GPU_PER_JOB = gpu_per_job(config)
