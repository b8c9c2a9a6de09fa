# electrode-ml: Ma et al. 2022 as a workflow. Wiring only; the logic lives in src/electrode_ml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# First: it checks the config against workflow/schemas/config.schema.yaml before anything reads it.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/peer.smk"
include: "workflow/rules/screen.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


# Light rules run where snakemake runs; on a cluster only the networks' jobs are submitted, so none
# asks a GPU partition for a job without a GPU (many sites refuse it). The two CPU-only fits take
# about 1 min (peer_gbm) and 20 s (voltage_trees) on one core.
localrules:
    all,
    data,
    split,
    features,
    physics,
    voltage_trees,
    peer_gbm,
    ensemble,
    screen_na,
    screen_k,
    report,


rule all:
    input:
        f"{RESULTS}/data/data_report.json",
        expand(f"{RESULTS}/ensemble/{{model}}/metrics.json", model=MODELS),
        expand(f"{RESULTS}/figures/{{model}}/parity.png", model=MODELS),
        expand(f"{RESULTS}/group/{{model}}/metrics.json", model=GROUP_MODELS),
        f"{RESULTS}/ensemble/peer_gbm/metrics.json",
        f"{RESULTS}/figures/peer_gbm/parity.png",
        f"{RESULTS}/report/index.html",
        # what `electrode-ml predict` loads besides the metrics: named here, a deleted one is made
        # again (an intermediate file nothing downstream is out of date for is not)
        rules.screen_k.input.transformers,
        rules.screen_k.input.checkpoints,
        rules.screen_k.input.physics,
        rules.screen_k.input.trees,
    default_target: True
