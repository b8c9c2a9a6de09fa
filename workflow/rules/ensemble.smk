# Stage 5: the Monte Carlo ensemble, its 95 % intervals, Table 3 metrics and Figs 3-5.
# A physics model (model1_phys, model2_phys) combines its physics with its base model's networks.


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
        model=lambda wildcards: wildcards.model,
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/physics.py"


rule ensemble:
    input:
        predictions=lambda wildcards: expand(
            rules.train.output.predictions, model=base_model(wildcards.model), seed=SEEDS
        ),
        train=lambda wildcards: expand(rules.features.output.train, model=base_model(wildcards.model)),
        val=lambda wildcards: expand(rules.features.output.val, model=base_model(wildcards.model)),
        test=lambda wildcards: expand(rules.features.output.test, model=base_model(wildcards.model)),
        physics=lambda wildcards: (
            expand(rules.physics.output.table, model=wildcards.model)[0]
            if is_physics_model(wildcards.model)
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
        model=lambda wildcards: wildcards.model,
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/ensemble.py"
