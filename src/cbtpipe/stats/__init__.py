"""The statistics: the tests themselves (``stattests``), the CTRS analysis of the judged sessions and
the safety analysis.

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "analysis": [
            "LONG_FIELDS",
            "ablation_comparison",
            "analyse",
            "declaration",
            "declared_before",
            "judge_provenance",
            "long_rows",
            "read_csv",
            "total_fields",
            "total_rows",
            "turn_scores_vs_context",
            "write_csv",
        ],
        "safety_stats": ["analyse_safety", "session_fields"],
        "stattests": ["finite", "minimum_detectable_dz"],
    },
)
