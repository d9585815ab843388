# Stage plot: one figure of one experiment, PNG (in the report) and PDF.


rule plot:
    input:
        group=rules.gather_cube.output.group,
    output:
        png=report(
            out("figures/{exp}/{figure}.png"),
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "{figure}"},
        ),
        pdf=out("figures/{exp}/{figure}.pdf"),
    log:
        out("logs/plot/{exp}/{figure}.log"),
    benchmark:
        out("benchmarks/plot/{exp}/{figure}.tsv")
    conda:
        ENV
    params:
        # the figure's own caption (dlnpipe/figures/captions/<figure>.rst), rendered by report/figure.rst
        caption=lambda w: figure_caption(w.figure),
    shell:
        logged(
            "python -m dlnpipe plot --cube $(dirname $(dirname {input.group})) --experiment {wildcards.exp} --figure {wildcards.figure}"
            " --png {output.png} --pdf {output.pdf}"
        )
