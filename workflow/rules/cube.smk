# Stage gather_cube: one job per experiment writes its group of results/<study>/cube.zarr (its cells' files
# into one labelled Dataset); cube_root writes the store's root (the study's attrs). No two jobs
# write the same file, and tables and figures read only their experiment's group.


rule gather_cube:
    input:
        data=lambda w: experiment_data(w.exp, ALL_DATA),
        train=lambda w: experiment_cells(rules.train_cell.output.npz, w.exp),
        measure=lambda w: experiment_cells(rules.measure_sharpness.output.npz, w.exp),
    output:
        # The group's metadata file stands for the group (the job replaces the whole directory
        # atomically), so that Snakemake leaves no marker file inside the Zarr hierarchy.
        group=out("cube.zarr/{exp}/zarr.json"),
    log:
        out("logs/gather_cube/{exp}.log"),
    benchmark:
        out("benchmarks/gather_cube/{exp}.tsv")
    conda:
        ENV
    params:
        spec=group_spec,
    shell:
        logged(
            "python -m dlnpipe gather --spec {params.spec:q} --data {input.data} --train {input.train}"
            " --measure {input.measure} --out $(dirname {output.group})"
        )


rule cube_root:
    input:
        groups=expand(rules.gather_cube.output.group, exp=list(STUDY.experiments)),
    output:
        # The root's metadata file stands for the store's root (written atomically), so that
        # Snakemake leaves no marker file inside the Zarr hierarchy.
        root=out("cube.zarr/zarr.json"),
    log:
        out("logs/cube_root/cube_root.log"),
    benchmark:
        out("benchmarks/cube_root/cube_root.tsv")
    conda:
        ENV
    params:
        config=root_config(),
    shell:
        logged(
            "python -m dlnpipe cube-root --config {params.config:q} --out $(dirname {output.root})"
        )
