# Peer baseline: Magpie features of both formulas + gradient-boosted trees (scikit-learn), one model per
# target, on the same split, written in the ensemble rule's format so it joins the comparison table.


rule peer_gbm:
    input:
        electrodes=rules.data.output.electrodes,
        split=rules.split.output.split,
    output:
        predictions=f"{RESULTS}/ensemble/peer_gbm/predictions.parquet",
        metrics=f"{RESULTS}/ensemble/peer_gbm/metrics.json",
        parity=report(f"{RESULTS}/figures/peer_gbm/parity.png", caption="../report/peer_parity.rst", category="Accuracy"),
        errors=report(f"{RESULTS}/figures/peer_gbm/error_histograms.png", caption="../report/peer_errors.rst",
                      category="Accuracy"),
    log:
        f"{RESULTS}/logs/peer_gbm.log",
    benchmark:
        f"{RESULTS}/benchmarks/peer_gbm.tsv"
    params:
        code=CODE_VERSION["peer_gbm"],
        seed=config["train"]["first_seed"],
        max_iter=config["peer_gbm"]["max_iter"],
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/peer_gbm.py"
