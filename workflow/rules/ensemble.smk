# Stage 5: the Monte Carlo ensemble, its 95 % intervals, Table 3 metrics and Figs 3-5.


rule ensemble:
    input:
        predictions=lambda wildcards: expand(rules.train.output.predictions, model=wildcards.model, seed=SEEDS),
        train=rules.features.output.train,
        val=rules.features.output.val,
        test=rules.features.output.test,
    output:
        predictions=f"{RESULTS}/ensemble/{{model}}/predictions.parquet",
        metrics=f"{RESULTS}/ensemble/{{model}}/metrics.json",
        parity=report(f"{RESULTS}/figures/{{model}}/parity.png", caption="../report/parity.rst", category="Accuracy"),
        errors=report(f"{RESULTS}/figures/{{model}}/error_histograms.png", caption="../report/errors.rst", category="Accuracy"),
    log:
        f"{RESULTS}/logs/ensemble/{{model}}.log",
    params:
        model=lambda wildcards: wildcards.model,
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/ensemble.py"
