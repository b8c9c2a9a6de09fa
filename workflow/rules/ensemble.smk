# Stage 5: the Monte Carlo ensemble, its 95 % intervals, Table 3 metrics and Figs 3-5.
# A physics model (model1_phys, model2_phys) combines its physics with its base model's networks.
# model1_phys's learned voltage also blends gradient-boosted trees (rule voltage_trees, trees.py).


rule physics:
    input:
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
    output:
        table=f"{RESULTS}/physics/{{model}}/physics.parquet",
        fitted=f"{RESULTS}/physics/{{model}}/physics.joblib",
        summary=f"{RESULTS}/physics/{{model}}/physics.json",
    wildcard_constraints:
        model="|".join(PHYSICS_BASES),
    log:
        f"{RESULTS}/logs/physics/{{model}}.log",
    params:
        code=CODE_VERSION["physics"],
        model=lambda wildcards: wildcards.model,
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/physics.py"


rule voltage_trees:
    input:
        train=lambda wildcards: expand(rules.features.output.train, model=base_model(wildcards.model)),
        val=lambda wildcards: expand(rules.features.output.val, model=base_model(wildcards.model)),
        test=lambda wildcards: expand(rules.features.output.test, model=base_model(wildcards.model)),
    output:
        fitted=f"{RESULTS}/physics/{{model}}/voltage_trees.joblib",
        summary=f"{RESULTS}/physics/{{model}}/voltage_trees.json",
    wildcard_constraints:
        model="|".join(model for model in KNOWN_MODELS if uses_voltage_trees(model)),
    log:
        f"{RESULTS}/logs/physics/{{model}}_voltage_trees.log",
    params:
        code=CODE_VERSION["voltage_trees"],
        trees=config["voltage_trees"],
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/voltage_trees.py"


rule ensemble:
    input:
        predictions=lambda wildcards: expand(
            rules.train.output.predictions, model=base_model(wildcards.model), seed=SEEDS
        ),
        train=lambda wildcards: expand(rules.features.output.train, model=base_model(wildcards.model)),
        val=lambda wildcards: expand(rules.features.output.val, model=base_model(wildcards.model)),
        test=lambda wildcards: expand(rules.features.output.test, model=base_model(wildcards.model)),
        transformers=lambda wildcards: expand(rules.features.output.transformers, model=base_model(wildcards.model))[0],
        electrodes=rules.data.output.electrodes,
        physics=lambda wildcards: (
            expand(rules.physics.output.table, model=wildcards.model)[0]
            if is_physics_model(wildcards.model)
            else []
        ),
        trees=lambda wildcards: (
            expand(rules.voltage_trees.output.fitted, model=wildcards.model)[0]
            if uses_voltage_trees(wildcards.model)
            else []
        ),
    output:
        predictions=f"{RESULTS}/ensemble/{{model}}/predictions.parquet",
        metrics=f"{RESULTS}/ensemble/{{model}}/metrics.json",
        parity=report(f"{RESULTS}/figures/{{model}}/parity.png", caption="../report/parity.rst", category="Accuracy"),
        errors=report(f"{RESULTS}/figures/{{model}}/error_histograms.png", caption="../report/errors.rst", category="Accuracy"),
    wildcard_constraints:
        model="|".join(MODELS),
    log:
        f"{RESULTS}/logs/ensemble/{{model}}.log",
    params:
        code=CODE_VERSION["ensemble"],
        model=lambda wildcards: wildcards.model,
        # the grouped evaluation's networks: the random split's ensemble of the same seeds, to set it against
        group_seeds=group_seeds(config),
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/ensemble.py"
