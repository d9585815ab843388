# Stage compare_bounds: every network against S_min, 8LΛ, η_c and 2/η; the claims of docs/theory.md#the-claims-the-tables-check.


rule compare_bounds:
    input:
        group=rules.gather_cube.output.group,
    output:
        csv=report(
            out("bounds/{exp}.csv"),
            caption="../report/bounds.rst",
            category="Bounds",
            labels={"experiment": "{exp}"},
        ),
        md=out("bounds/{exp}.md"),
        constant=out("bounds/{exp}_constant.csv"),
    log:
        out("logs/compare_bounds/{exp}.log"),
    benchmark:
        out("benchmarks/compare_bounds/{exp}.tsv")
    conda:
        ENV
    shell:
        logged(
            "python -m dlnpipe bounds --cube $(dirname $(dirname {input.group})) --experiment {wildcards.exp}"
            " --csv {output.csv} --md {output.md} --constant {output.constant}"
        )
