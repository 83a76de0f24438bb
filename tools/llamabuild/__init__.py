"""The llama.cpp build behind ``tools/llama_cpp_build.py``: ``flags`` (the version, the profiles
and their CMake flags, the store key, the CPU check), ``build`` (the sdist, the wheel, the tools
and the store), ``scan`` (instructions outside the portable baseline) and ``smoke`` (a long
prompt as one batch in a fresh process). Standard library only, but for the smoke test."""
