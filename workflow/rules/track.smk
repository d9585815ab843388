# Stage track: MLflow runs for every training configuration. Local rules only, so cluster jobs never
# open the tracking store; the study's experiments are created once, before any of its cells logs. The
# store (results/mlflow.db) is shared by every study; each logs into its own <prefix><study>/<experiment>.


localrules:
    mlflow_init,
    track_experiment,


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


# One job per experiment: it reruns when any of its cells' results do, and relogs only the cells whose
# results changed (the runs carry a fingerprint of them); the others keep their run ids.
rule track_experiment:
    input:
        # ancient: creating the store's experiments again (a new experiment in the study) relogs nothing
        init=ancient(rules.mlflow_init.output.json),
        data=all_data,
        train=experiment_files(rules.train_cell.output.npz),
        measure=experiment_files(rules.measure_sharpness.output.npz),
    output:
        json=out("mlflow/logged/{exp}.json"),
    log:
        out("logs/track_experiment/{exp}.log"),
    benchmark:
        out("benchmarks/track_experiment/{exp}.tsv")
    conda:
        ENV
    params:
        uri=TRACKING_URI,
        name=mlflow_name,
        groups=lambda w: json.dumps(experiment_groups(w.exp)),
        cube=rules.cube_root.output.root,
        study=STUDY_NAME,
    shell:
        logged(
            "python -m dlnpipe track --uri {params.uri:q} --name {params.name:q} --groups {params.groups:q}"
            " --data {input.data} --train {input.train} --measure {input.measure}"
            " --cube $(dirname {params.cube}) --study {params.study} --out {output.json}"
        )
