# Stage plot: one figure of one experiment, PNG (in the report) and PDF.


rule plot:
    input:
        cube=rules.gather_cube.output.cube,
    output:
        png=report(
            "results/figures/{exp}/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "{figure}"},
        ),
        pdf="results/figures/{exp}/{figure}.pdf",
    log:
        "logs/plot/{exp}/{figure}.log",
    benchmark:
        "benchmarks/plot/{exp}/{figure}.tsv"
    conda:
        ENV
    shell:
        "python -m dlnpipe plot --cube $(dirname {input.cube}) --experiment {wildcards.exp} --figure {wildcards.figure}"
        " --png {output.png} --pdf {output.pdf} 2> {log}"
