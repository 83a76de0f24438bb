"""The GPU check behind ``tools/gpu_check.py``, a module per phase: ``environment`` (the GPU and its
measured bandwidth and matmul rate), ``cudabuild`` (llama.cpp's CUDA build in the background),
``training`` (the project's training code on an 8B model against trl's defaults) and ``decoding``
(a Q8_0 GGUF in llama.cpp, llama-bench and llama-server); ``common`` holds the results and the
clock they share."""
