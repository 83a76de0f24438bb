"""cbtpipe: the library behind the CBT fine-tuning pipeline.

Its folders are the pipeline's layers, lowest first; a layer imports only the layers below it
(``tests/test_structure.py`` holds that):

- ``workflow``: errors, files and units, the configuration, secrets, the registry, progress;
- ``llm``: the LLM backends (llama.cpp in process or behind its server, OpenAI-compatible APIs);
- ``design``: the study's design: profiles, risk, the course, chat layouts, prompts, rubrics;
- ``stages``: one module per step of the rule graph, from transcripts to the safety judge;
- ``stats``: the statistical tests and the analyses of the judged sessions;
- ``report``: the report, the results browser and the rating packet;
- on top, the study's front door: ``checks`` (a config before anything runs), ``plan`` (what a
  config will cost) and ``rehearsal`` (a small run against faults).

Entry scripts in ``scripts/`` read Snakemake's ``snakemake`` object and call the functions of a
layer's face (its ``__init__``); the tests call the same functions.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def face(package: str, modules: dict[str, list[str]]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """A layer's public face (PEP 562): ``__getattr__``, ``__dir__`` and ``__all__`` for its
    ``__init__``, from module -> the public names it defines. A name is imported from its module
    when first used, so a job imports only the modules it calls: a statistics job loads no LLM
    client, and no native library is loaded before llama.cpp's (see workflow.rule)."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
