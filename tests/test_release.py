"""Release hygiene: the license, the citation file and the package agree on the version and the
license, and the README states the release tag convention."""

from __future__ import annotations

import tomllib

import yaml


def test_license_citation_and_package_agree(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == project["version"], "CITATION.cff and pyproject.toml name other versions"
    assert cff["license"] == project["license"]["text"] == "MIT"
    assert (root / "LICENSE").read_text().startswith("MIT License")
    ref = cff["preferred-citation"]
    assert ref["year"] == 2024 and "arXiv:2412.00251" in str(ref["identifiers"])
    # where the code lives, when this version was released, and the paper's DOI as a reference
    assert cff["repository-code"] == project["urls"]["Repository"] and cff["repository-code"].startswith("https://")
    import datetime

    assert datetime.date.fromisoformat(str(cff["date-released"]))
    doi = "10.48550/arXiv.2412.00251"
    assert ref["doi"] == doi and any(r.get("doi") == doi for r in cff["references"])
    assert project["urls"]["Paper"] == f"https://doi.org/{doi}"
    readme = (root / "README.md").read_text()
    assert f"v{project['version']}" in readme and "CITATION.cff" in readme
