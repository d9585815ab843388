# Stage track: MLflow runs for every training configuration. Local rules only, so cluster jobs never
# open the tracking store; the study's experiments are created once, before any of its cells logs. The
# store (results/mlflow.db) is shared by every study; each logs into its own <prefix><study>/<experiment>.


localrules:
    mlflow_init,
    track_cell,


rule mlflow_init:
    output:
        json=out("mlflow/experiments.json"),
    log:
        out("logs/mlflow_init/mlflow_init.log"),
    benchmark:
        out("benchmarks/mlflow_init/mlflow_init.tsv")
    conda:
        ENV
    params:
        uri=TRACKING_URI,
        names=[MLFLOW_NAMES[e] for e in STUDY.experiments],
        artifacts=out("mlflow/artifacts"),
        views=mlflow_views(),
    shell:
        logged(
            "python -m dlnpipe track-init --uri {params.uri:q} --experiments {params.names:q}"
            " --artifacts {params.artifacts} --views {params.views:q} --out {output.json}"
        )


rule track_cell:
    input:
        # ancient: creating the store's experiments again (a new experiment in the study) relogs nothing
        init=ancient(rules.mlflow_init.output.json),
        data=group_data,
        train=group_files(rules.train_cell.output.npz),
        measure=group_files(rules.measure_sharpness.output.npz),
    output:
        json=out("mlflow/logged/{exp}/{group}.json"),
    log:
        out("logs/track_cell/{exp}/{group}.log"),
    benchmark:
        out("benchmarks/track_cell/{exp}/{group}.tsv")
    conda:
        ENV
    params:
        uri=TRACKING_URI,
        name=mlflow_name,
        cube=rules.cube_root.output.root,
        study=STUDY_NAME,
    shell:
        logged(
            "python -m dlnpipe track --uri {params.uri:q} --name {params.name:q} --cell {wildcards.group}"
            " --data {input.data} --train {input.train} --measure {input.measure}"
            " --cube $(dirname {params.cube}) --study {params.study} --out {output.json}"
        )
