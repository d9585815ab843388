# Stage measure_sharpness: Lanczos top-k (final and at init), the exact formula at converged
# networks, and the rank-one / alignment diagnostics.


rule measure_sharpness:
    input:
        data=cell_data,
        train=rules.train_cell.output.npz,
    output:
        npz=out("measure/{exp}/{cell}.npz"),
    log:
        out("logs/measure_sharpness/{exp}/{cell}.log"),
    benchmark:
        out("benchmarks/measure_sharpness/{exp}/{cell}.tsv")
    priority: cell_priority
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=uses_gpu,
    params:
        spec=cell_spec("measure"),
    shell:
        logged(
            "python -m dlnpipe measure --spec {params.spec:q} --data {input.data} --train {input.train}"
            " --out {output.npz} --threads {threads}"
        )
