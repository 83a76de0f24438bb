"""The report layer: what a reader opens after a run.

The report (``views``: one function per section of the report, each the formatted rows of its
tables; ``figures``; ``provenance``: packages, models, files, benchmarks; ``page``: links into
the results browser, HTML; ``numbers``: number formats), the results browser (``browser``) and the
blinded rating packet for human raters (``packet``).

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "browser": ["browser_data", "write_browser"],
        "figures": ["draw_figures", "loss_curves", "safety_forest"],
        "markdown": ["build_markdown", "load_many"],
        "numbers": ["fmt", "fmt_p"],
        "packet": ["build_packet", "load_packet_ratings"],
        "page": ["link_rows", "md_to_html", "write_report"],
        "provenance": ["benchmark_table", "collect_provenance"],
        "views": ["report_view"],
        "views_primary": ["PUBLISHED", "arm_timing"],
        "views_run": ["plan_view"],
        "views_safety": ["safety_view"],
        "views_simulator": ["simulator_view"],
    },
)
