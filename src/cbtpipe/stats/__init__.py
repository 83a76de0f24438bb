"""The statistics: the tests themselves (``stattests``), the CTRS analysis of the judged sessions and
the safety analysis.

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "analysis": ["analyse"],
        "ctrs": ["ablation_comparison", "ablation_tests", "turn_scores_vs_context", "turn_tests"],
        "register": ["declaration", "declared_before", "judge_provenance", "safety_provenance"],
        "safety_sessions": ["session_fields"],
        "safety_stats": ["analyse_safety"],
        "stattests": ["finite", "minimum_detectable_dz"],
        "tables": ["LONG_FIELDS", "long_rows", "read_csv", "total_fields", "total_rows", "write_csv"],
    },
)
