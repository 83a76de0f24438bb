"""The LLM layer: one interface for every LLM call (``make_backend``), llama.cpp in process and
behind its own server, any OpenAI-compatible endpoint, GGUF files, and the machinery that makes
llama.cpp's answers canonical and fast (schema filling, grammar sampling, kept KV states).

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "base": ["Backend", "BackendError", "Completion", "JsonResult", "cost_usd", "make_backend", "sum_llm_stats", "validate_json_text"],
        "llamacpp": ["LlamaCppBackend"],
        "openai_compat": ["OpenAIBackend"],
        "gguf": ["check_gguf_file", "gguf_chat_template", "resolve_gguf"],
        "llama_server": ["LlamaServer", "LlamaServerBackend"],
    },
)
