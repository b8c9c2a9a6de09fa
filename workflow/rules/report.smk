# Stage 8: one self-contained HTML page with every table and figure beside the paper's numbers.


rule report:
    input:
        data_report=rules.data.output.report,
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
        metrics=expand(f"{RESULTS}/ensemble/{{model}}/metrics.json", model=MODELS),
        predictions=expand(f"{RESULTS}/ensemble/{{model}}/predictions.parquet", model=MODELS),
        parity=expand(f"{RESULTS}/figures/{{model}}/parity.png", model=MODELS),
        errors=expand(f"{RESULTS}/figures/{{model}}/error_histograms.png", model=MODELS),
        na_screening=rules.screen_na.output.screening,
        na_all=rules.screen_na.output.all,
        na_metrics=rules.screen_na.output.metrics,
        k_table=rules.screen_k.output.table,
        k_summary=rules.screen_k.output.summary,
        fig7=rules.screen_k.output.figure,
        timing=rules.timing.output.timing,
        # Beyond the paper: the peer baseline, the framework-grouped split, the physics summaries.
        peer=rules.peer_gbm.output.metrics,
        peer_parity=rules.peer_gbm.output.parity,
        peer_errors=rules.peer_gbm.output.errors,
        group=expand(rules.group_evaluation.output.metrics, model=GROUP_MODELS),
        physics=expand(rules.physics.output.summary, model=PHYSICS_MODELS),
        contribution=rules.feature_contribution.output.summary if CONTRIBUTION_MODEL in BASE_MODELS else [],
        contribution_seeds=rules.feature_contribution.output.per_seed if CONTRIBUTION_MODEL in BASE_MODELS else [],
        contribution_figure=rules.feature_contribution.output.figure if CONTRIBUTION_MODEL in BASE_MODELS else [],
    output:
        html=report(f"{RESULTS}/report/index.html", caption="../report/index.rst", category="Report"),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        code=CODE_VERSION["report"],
        models=MODELS,
        # as the jobs read it: a setting no job reads (tune.patience of full-recipe trials) reruns nothing
        config={**config, "tune": tune_settings(config["tune"])},
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/report.py"
