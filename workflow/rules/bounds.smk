# Stage compare_bounds: every network against S_min, 8LΛ, η_c and 2/η; the claims of docs/theory.md#the-claims-the-tables-check.


rule compare_bounds:
    input:
        group=rules.gather_cube.output.group,
    output:
        csv=report(
            "results/bounds/{exp}.csv",
            caption="../report/bounds.rst",
            category="Bounds",
            labels={"experiment": "{exp}"},
        ),
        md="results/bounds/{exp}.md",
        constant="results/bounds/{exp}_constant.csv",
    log:
        "logs/compare_bounds/{exp}.log",
    benchmark:
        "benchmarks/compare_bounds/{exp}.tsv"
    conda:
        ENV
    shell:
        logged(
            "python -m dlnpipe bounds --cube $(dirname $(dirname {input.group})) --experiment {wildcards.exp}"
            " --csv {output.csv} --md {output.md} --constant {output.constant}"
        )
