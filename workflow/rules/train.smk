# Stage train_cell: one job per (experiment, init, depth, width, dataset, part); all the cell's
# networks (learning rates x scales x seeds) are trained at once as batched tensors.


rule train_cell:
    input:
        data=cell_data,
    output:
        npz=out("train/{exp}/{cell}.npz"),
    log:
        out("logs/train_cell/{exp}/{cell}.log"),
    benchmark:
        out("benchmarks/train_cell/{exp}/{cell}.tsv")
    priority: cell_priority
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=uses_gpu,
    params:
        spec=cell_spec("train"),
    shell:
        logged(
            "python -m dlnpipe train --spec {params.spec:q} --data {input.data} --out {output.npz}"
            " --threads {threads}"
        )
