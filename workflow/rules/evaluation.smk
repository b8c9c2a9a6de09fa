# Honest evaluation: the pipeline again on a framework-grouped split (no host on both sides).


rule group_evaluation:
    input:
        electrodes=rules.data.output.electrodes,
        params=rules.tune.output.best,
    output:
        metrics=f"{RESULTS}/group/{{model}}/metrics.json",
        predictions=f"{RESULTS}/group/{{model}}/predictions.parquet",
    wildcard_constraints:
        model=NETWORK_MODELS,
    log:
        f"{RESULTS}/logs/group/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/group/{{model}}.tsv"
    params:
        code=CODE_VERSION["group_evaluation"],
        base=lambda wildcards: wildcards.model,
        variants=lambda wildcards: variants_of(wildcards.model, MODELS),
        seeds=group_seeds(config),
        split=config["split"],
        features=lambda wildcards: model_feature_settings(config["features"], wildcards.model),
        train=lambda wildcards: model_train_settings(config["train"], wildcards.model),
        trees=lambda wildcards: voltage_tree_settings(variants_of(wildcards.model, MODELS),
                                                      config["voltage_trees"]),
    threads: 1
    priority: LONG_JOB_PRIORITY
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/group_evaluation.py"
