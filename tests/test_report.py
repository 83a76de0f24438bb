"""The HTML page of the report: markdown-it-py's rendering, figures inlined, wide tables in a box."""

import base64

from cbtpipe.report import fmt, fmt_p, md_to_html


def test_html_page_is_self_contained_and_safe(tmp_path):
    (tmp_path / "figures").mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    (tmp_path / "figures" / "a.png").write_bytes(png)
    wide = "| " + " | ".join(f"col{i}" for i in range(30)) + " |\n|" + "---|" * 30 + "\n| " + " | ".join("1.00" for _ in range(30)) + " |"
    md = f"# Title\n\n> A note.\n\n![Totals](figures/a.png)\n\n{wide}\n\nA <script>alert(1)</script> and `code`.\n"
    page = md_to_html(md, tmp_path, "Report")
    assert page.startswith("<!DOCTYPE html>") and "<h1>Title</h1>" in page
    assert '<figure><img src="data:image/png;base64,' + base64.b64encode(png).decode() in page and "<figcaption>Totals</figcaption>" in page
    assert '<div class="table-wrap"><table>' in page and page.count("<th>") == 30 and ".table-wrap{overflow-x:auto" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "<code>code</code>" in page
    assert "<blockquote>" in page


def test_numbers_never_print_nan():
    assert fmt(float("nan")) == "—" and fmt(None) == "—" and fmt(1.234) == "1.23" and fmt(0.0001) == "1.0e-04"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.04) == "0.040" and fmt_p("x") == "—"
