# Stage make_dataset: one dataset per (experiment, kappa), read by every cell that uses it.


rule make_dataset:
    output:
        npz=out("data/{exp}/{data}.npz"),
    log:
        out("logs/make_dataset/{exp}/{data}.log"),
    benchmark:
        out("benchmarks/make_dataset/{exp}/{data}.tsv")
    conda:
        ENV
    params:
        spec=data_spec,
    shell:
        logged("python -m dlnpipe data --spec {params.spec:q} --out {output.npz}")
