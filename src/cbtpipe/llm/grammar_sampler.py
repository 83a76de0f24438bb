"""Grammar-constrained sampling in llama.cpp at the cost of unconstrained sampling.

llama-cpp-python puts the grammar into the sampler chain, so every token checks the grammar
against the whole vocabulary (49,152 tokens for SmolLM2): on a 2-core CPU that took about 4 ms of
a JSON token's 15 ms. llama.cpp's own samplers (``common_sampler`` in the server and
the CLI) sample first and check only the chosen token against the grammar; only when the grammar
rejects it do they constrain the whole vocabulary and sample again. This module does the same
inside llama-cpp-python, through its low-level API:

1. the chain without the grammar (penalties, top-k, typical, top-p, min-p, temperature, and the
   seeded draw, or greedy) picks a token from the raw logits;
2. the grammar judges that one token;
3. rejected: the grammar masks the raw logits and the chain picks again.

Every answer still follows the grammar, and a greedy answer is the same token for token. A
sampled answer is seeded, so a run repeats exactly, but it is not drawn from the same
distribution: when the model's own draw is valid it is kept, where the chain with the grammar
would have drawn from the probabilities renormalized over the valid tokens. The token chosen is
fed to the grammar and to the chain (the repetition penalty's history) as llama.cpp does.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from typing import Any

# Part of the backend's identity: answers drawn before this sampler came in are not reused.
SAMPLER_ID = "grammar-checks-the-draw-v1"


class RejectionGrammarSampler:
    """Stands in for llama-cpp-python's ``LlamaSampler`` when a call has a grammar (the ``sample``
    method is all that ``Llama.sample`` uses)."""

    def __init__(self, chain: Any, model: Any, grammar: Any, n_vocab: int):
        import llama_cpp
        import numpy as np

        self._lib = llama_cpp
        self.chain = chain  # an internals.LlamaSampler without the grammar (frees itself)
        self.grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self.grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self.n_vocab = n_vocab
        self.rejections = 0
        self.draws = 0
        dt = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._data = np.zeros(n_vocab, dtype=dt)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._arr = llama_cpp.llama_token_data_array(
            data=self._data.ctypes.data_as(llama_cpp.llama_token_data_p), size=n_vocab, selected=-1, sorted=False
        )
        self._one_data = (llama_cpp.llama_token_data * 1)()
        self._one = llama_cpp.llama_token_data_array(data=self._one_data, size=1, selected=-1, sorted=False)

    def _fill(self, logits: Any) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        self._arr.size = self.n_vocab
        self._arr.selected = -1
        self._arr.sorted = False

    def _pick(self) -> int:
        lib = self._lib
        lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(self._arr))
        sel = int(self._arr.selected)
        if sel < 0 or sel >= int(self._arr.size):
            raise RuntimeError("the sampler chain selected no token")
        return int(self._data["id"][sel])

    def allows(self, token: int) -> bool:
        self._one_data[0].id = token
        self._one_data[0].logit = 1.0
        self._one_data[0].p = 0.0
        self._one.size = 1
        self._one.selected = -1
        self._one.sorted = False
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(self._one))
        return not math.isinf(self._one_data[0].logit)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        import numpy as np

        lib = self._lib
        ptr = lib.llama_get_logits_ith(ctx.ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        self._fill(logits)
        token = self._pick()
        self.draws += 1
        if not self.allows(token):
            self.rejections += 1
            self._fill(logits)
            lib.llama_sampler_apply(self.grammar, ctypes.byref(self._arr))
            token = self._pick()
        lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.chain.sampler, token)
        return token

    def close(self) -> None:
        if self.grammar:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None
        self.chain.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to free into
            self.close()


def install(llm: Any) -> None:
    """Make ``llm`` (a ``llama_cpp.Llama``) check grammars against the drawn token first."""
    original = llm._init_sampler

    def init_sampler(*args: Any, grammar: Any = None, **kwargs: Any) -> Any:
        chain = original(*args, grammar=None, **kwargs)
        if grammar is None:
            return chain
        return RejectionGrammarSampler(chain, llm._model, grammar, llm.n_vocab())

    llm._init_sampler = init_sampler
