# Stage 6: the paper's applications (section 3.2): the Na-ion screen (Tables 5-6) and Li -> K (Fig 7).


rule screen_na:
    input:
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
        predictions=expand(f"{RESULTS}/ensemble/{{model}}/predictions.parquet", model=MODELS),
    output:
        screening=f"{RESULTS}/screening/na_screening.csv",
        all=f"{RESULTS}/screening/na_screening_all.csv",
        table5=f"{RESULTS}/screening/table5.md",
        table6=f"{RESULTS}/screening/table6.md",
        metrics=f"{RESULTS}/screening/na_metrics.json",
    log:
        f"{RESULTS}/logs/screening/screen_na.log",
    params:
        code=CODE_VERSION["screen_na"],
        models=MODELS,
        thresholds=config["screen"]["na"],
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/screen_na.py"


rule screen_k:
    input:
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
        transformers=expand(f"{RESULTS}/features/{{model}}/transformers.joblib", model=BASE_MODELS),
        checkpoints=expand(f"{RESULTS}/train/{{model}}/seed_{{seed}}/model.pt", model=BASE_MODELS, seed=SEEDS),
        physics=expand(f"{RESULTS}/physics/{{model}}/physics.joblib", model=PHYSICS_MODELS),
        trees=expand(f"{RESULTS}/physics/{{model}}/voltage_trees.joblib", model=VOLTAGE_TREE_MODELS),
        metrics=expand(f"{RESULTS}/ensemble/{{model}}/metrics.json", model=MODELS),
    output:
        table=f"{RESULTS}/screening/k_substitution.csv",
        summary=f"{RESULTS}/screening/k_substitution.json",
        figure=report(f"{RESULTS}/screening/fig7.png", caption="../report/fig7.rst", category="Screening"),
    log:
        f"{RESULTS}/logs/screening/screen_k.log",
    params:
        code=CODE_VERSION["screen_k"],
        models=MODELS,
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/screen_k.py"
