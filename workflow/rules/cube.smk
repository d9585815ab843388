# Stage gather_cube: the single writer of results/cube.zarr (one group per experiment).


rule gather_cube:
    input:
        data=expand(rules.make_dataset.output.npz, zip, **data_keys()),
        train=expand(rules.train_cell.output.npz, zip, **cell_keys()),
        measure=expand(rules.measure_sharpness.output.npz, zip, **cell_keys()),
    output:
        # The store's root metadata file stands for the whole store (written atomically), so that
        # Snakemake leaves no marker file inside the Zarr hierarchy.
        cube="results/cube.zarr/zarr.json",
    log:
        "logs/gather_cube/gather_cube.log",
    benchmark:
        "benchmarks/gather_cube/gather_cube.tsv"
    conda:
        ENV
    params:
        config=json.dumps(STUDY.model_dump(mode="json")),
    shell:
        "python -m dlnpipe gather --config {params.config:q} --data {input.data}"
        " --train {input.train} --measure {input.measure} --out $(dirname {output.cube}) 2> {log}"
