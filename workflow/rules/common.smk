# Shared by every rule file: the output root, the model and seed lists, config checks.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from electrode_ml.config import check_config, seeds
from electrode_ml.errors import InputError

try:
    check_config(config)
except InputError as error:
    raise WorkflowError(str(error))



def _cuda_visible():
    """Cheap check that does not import torch in the scheduler: any NVIDIA device node or a set CUDA_VISIBLE_DEVICES."""
    import glob
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    return bool(glob.glob("/dev/nvidia[0-9]*"))


RESULTS = config["results"].rstrip("/")
MODELS = config["models"]
SEEDS = seeds(config)
SPLITS = ["train", "val", "test"]


def data_source_input(wildcards):
    """The snapshot is an input only when it is the source, so a download run does not need it."""
    from electrode_ml.steps import resolve_source

    try:
        source = resolve_source(config["data"]["source"])
    except InputError as error:
        raise WorkflowError(str(error))
    return config["data"]["snapshot"] if source == "snapshot" else []

# Training and tuning jobs each claim one GPU when the workflow runs on CUDA (see devices.py).
GPU_PER_JOB = 1 if config["train"]["device"] == "cuda" or (config["train"]["device"] == "auto" and _cuda_visible()) else 0
