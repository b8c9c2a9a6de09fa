# Stage 1: the electrode table (MP download or snapshot) and its train/val/test split.


rule data:
    input:
        snapshot=SNAPSHOT,
    output:
        electrodes=f"{RESULTS}/data/electrodes.parquet",
        report=f"{RESULTS}/data/data_report.json",
    log:
        f"{RESULTS}/logs/data.log",
    params:
        code=CODE_VERSION["data"],
        data=config["data"],
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/data.py"


rule split:
    input:
        electrodes=rules.data.output.electrodes,
    output:
        split=f"{RESULTS}/split/split.parquet",
    log:
        f"{RESULTS}/logs/split.log",
    params:
        code=CODE_VERSION["split"],
        split=config["split"],
        group_seeds=len(group_seeds(config)),
    threads: 1
    conda:
        "../../envs/electrode-ml.yaml"
    script:
        "../scripts/split.py"
