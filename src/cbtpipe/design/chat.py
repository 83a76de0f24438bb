"""How a conversation meets a model's chat template, defined once for training and inference.

* **Layout.** Where the therapist's system prompt goes: ``native`` (the template's own system
  message) or ``first_user`` (the system text folded into the first user turn), and the
  ``separator``: fixed text some templates put between the generation prompt and the content of
  an assistant turn (Mistral v0.3: a space after ``[/INST]``), which the model generates and the
  loss therefore covers. ``native`` is used
  only where the template renders the system prompt in every prefix of a conversation the same
  way; Mistral's templates put it inside the *last* user message, so a training example (which
  ends with an assistant turn) would carry no system prompt and the render that ends with the
  generation prompt would not be a prefix of the whole. The layout is chosen per model by
  :func:`chat_layout`, recorded in ``results/models/<model>/chat_layout.json`` and applied by
  :func:`apply_layout` to the training examples and to every therapist call of a rollout.
* **Loss mask, proven.** :func:`mask_example` marks the tokens of each therapist turn plus its
  end-of-turn token, from character offsets of the rendered text, and checks what it marked: the
  text under the masked tokens of each turn is exactly the turn and its end-of-turn token, and the
  system prompt is in the rendered example. Anything else is an error that names the turn.
* **Shortening keeps whole exchanges.** :func:`windows` splits a conversation that does not fit
  ``max_length`` into windows of whole (user, assistant) exchanges, each with the system prompt,
  the last one ending where the session ends; :func:`drop_oldest_exchange` shortens a rollout
  prompt by one exchange, keeping the roles alternating.
"""

from __future__ import annotations

from typing import Any

from ..workflow import PipelineError

LAYOUTS = ("native", "first_user")

# A conversation that shows where a template puts the system prompt and how turns end.
_PROBE = [
    {"role": "system", "content": "SYSTEMPROBE Be a careful therapist."},
    {"role": "user", "content": "USERPROBE1 I feel low."},
    {"role": "assistant", "content": "ASSISTANTPROBE1 What has been on your mind?"},
    {"role": "user", "content": "USERPROBE2 Work, mostly."},
    {"role": "assistant", "content": "ASSISTANTPROBE2 Let us put that on the agenda."},
]


def apply_layout(messages: list[dict[str, str]], layout: dict[str, Any] | str) -> list[dict[str, str]]:
    """The messages as the model sees them under ``layout`` (a layout dict or its system mode)."""
    mode = layout if isinstance(layout, str) else layout["system"]
    if mode not in LAYOUTS:
        raise PipelineError(f"chat layout: unknown system mode {mode!r} (one of {', '.join(LAYOUTS)})")
    if mode == "native" or not messages or messages[0]["role"] != "system":
        return [dict(m) for m in messages]
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        return rest
    return [{"role": "user", "content": system}, *rest]


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _special_strings(tokenizer) -> list[str]:
    """Every special token's text, longest first (an end-of-turn token is one of them)."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok))
    return sorted((s for s in found if s), key=len, reverse=True)


def end_of_turn(tokenizer, after: str) -> str | None:
    """The special token that ends an assistant turn, read from the text that follows its content."""
    return next((s for s in _special_strings(tokenizer) if after.startswith(s)), None)


def check_layout(tokenizer, mode: str) -> tuple[str | None, str | None, str]:
    """(reason the layout fails on the probe conversation or None, the end-of-turn token, the
    separator). The separator is fixed text a template puts between the generation prompt and an
    assistant turn's content (Mistral v0.3 renders ``"[/INST]" + " " + content``): the model
    generates it as the start of its turn, so it belongs to the turn, in training and inference
    alike; it must be the same for every turn."""
    msgs = apply_layout(_PROBE, mode)
    try:
        full = render(tokenizer, msgs)
    except Exception as e:  # noqa: BLE001 - a template's raise_exception, any jinja error
        return f"the template refuses the conversation ({e})", None, ""
    if _PROBE[0]["content"] not in full:
        return "the rendered conversation does not contain the system prompt", None, ""
    eot, sep = None, None
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        try:
            head = render(tokenizer, msgs[:i], generation_prompt=True)
            upto = render(tokenizer, msgs[: i + 1])
        except Exception as e:  # noqa: BLE001
            return f"the template refuses a prefix of the conversation ({e})", None, ""
        k = sum(x["role"] == "assistant" for x in msgs[: i + 1])
        if not full.startswith(head):
            return (
                (
                    f"the render that ends with the generation prompt before assistant turn {k} is not a prefix of "
                    "the whole conversation (the system prompt moves), so that turn's loss would start at the wrong token"
                ),
                None,
                "",
            )
        at = full.find(m["content"], len(head))
        this_sep = full[len(head) : at] if at >= 0 else None
        if this_sep is None or len(this_sep) > 16 or (sep is not None and this_sep != sep):
            return f"assistant turn {k} is not rendered right after the generation prompt (or after one fixed separator)", None, ""
        sep = this_sep
        if not upto.startswith(head + sep + m["content"]) or not full.startswith(upto):
            return f"assistant turn {k} is not rendered right after the generation prompt", None, ""
        eot = end_of_turn(tokenizer, full[at + len(m["content"]) :])
        if eot is None:
            after = full[at + len(m["content"]) :][:20]
            return f"assistant turn {k} is followed by {after!r}, which does not start with a special token", None, ""
    return None, eot, sep or ""


def chat_layout(tokenizer, model: str, prefer: str = "auto") -> dict[str, Any]:
    """The layout of ``model``'s chat template: ``native`` where it holds, else ``first_user``;
    with the fixed text between the generation prompt and a turn's content (``separator``)."""
    modes = LAYOUTS if prefer == "auto" else (prefer,)
    reasons: dict[str, str] = {}
    for mode in modes:
        why, eot, sep = check_layout(tokenizer, mode)
        if why is None:
            return {"model": model, "system": mode, "end_of_turn": eot, "separator": sep, "not_native_because": reasons.get("native")}
        reasons[mode] = why
    detail = "; ".join(f"{m}: {w}" for m, w in reasons.items())
    raise PipelineError(
        f"model {model}: its chat template cannot carry the therapist's system prompt consistently ({detail}); "
        f"set models.{model}.chat_template to a template that can"
    )


def _tokens(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_count(tokenizer, messages: list[dict[str, str]]) -> int:
    return len(_tokens(tokenizer, render(tokenizer, messages))[0])


def mask_example(tokenizer, messages: list[dict[str, str]], layout: dict[str, Any]) -> dict[str, Any]:
    """Token ids of a conversation under ``layout`` and a mask that is 1 exactly on each assistant
    turn's content and its end-of-turn token; checked, not assumed (see the module's docstring)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    msgs = apply_layout(messages, layout)
    full = render(tokenizer, msgs)
    if system is not None and system not in full:
        raise PipelineError(f"chat layout {layout['system']}: the rendered training example lacks the system prompt")
    ids, offsets = _tokens(tokenizer, full)
    sep = layout.get("separator", "") or ""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        head = render(tokenizer, msgs[:i], generation_prompt=True)
        start = len(head)
        turn = len(spans) + 1
        body = sep + m["content"]  # the separator is the start of what the model generates
        if not full.startswith(head) or full[start : start + len(body)] != body:
            raise PipelineError(f"therapist turn {turn}: the chat template does not render it right after the generation prompt")
        eot = end_of_turn(tokenizer, full[start + len(body) :])
        if eot is None:
            raise PipelineError(f"therapist turn {turn}: no end-of-turn special token follows it")
        spans.append((start, start + len(body) + len(eot), body + eot))
    mask = [0] * len(ids)
    for turn, (s, e, want) in enumerate(spans, 1):
        idx = [j for j, (a, b) in enumerate(offsets) if b > a and s <= a and b <= e]
        straddle = [j for j, (a, b) in enumerate(offsets) if (a < s < b) or (a < e < b)]
        got = "".join(full[offsets[j][0] : offsets[j][1]] for j in idx)
        # a tokenizer may leave a separator's whitespace out of the offsets of the token that
        # carries it (a SentencePiece "▁word"): what the turn's first token covers starts later
        lead = want[: len(want) - len(got)] if want.endswith(got) else None
        if straddle or not (got == want or (lead and not lead.strip() and len(lead) <= len(sep))):
            raise PipelineError(
                f"therapist turn {turn}: the masked tokens cover {got!r}, not the turn and its end-of-turn token "
                "(a token crosses the turn's boundary in this tokenizer)"
            )
        for j in idx:
            mask[j] = 1
    return {"input_ids": ids, "assistant_masks": mask, "turns": len(spans)}


def exchanges(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[list[dict[str, str]]]]:
    """(system messages, the (user, assistant) exchanges) of a training conversation."""
    head = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(head) :]
    if len(rest) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(rest)):
        raise PipelineError("a training conversation must alternate user and assistant turns after the system prompt")
    return head, [rest[i : i + 2] for i in range(0, len(rest), 2)]


def windows(tokenizer, messages: list[dict[str, str]], layout: dict[str, Any], max_length: int) -> list[list[dict[str, str]]]:
    """The conversation, or windows of whole exchanges that each fit ``max_length`` tokens.

    Built from the end backwards, so the last window ends with the session's closing turn; every
    exchange is in exactly one window and each window starts with the system prompt. A single
    exchange longer than ``max_length`` is its own window (the caller cuts it and counts it)."""
    head, ex = exchanges(messages)

    def size(chunk):
        return token_count(tokenizer, apply_layout(head + [m for e in chunk for m in e], layout))

    if size(ex) <= max_length:
        return [messages]
    out: list[list[dict[str, str]]] = []
    end = len(ex)
    while end > 0:
        start = end - 1
        while start > 0 and size(ex[start - 1 : end]) <= max_length:
            start -= 1
        out.append(head + [m for e in ex[start:end] for m in e])
        end = start
    return out[::-1]


def drop_oldest_exchange(messages: list[dict[str, str]], keep: int) -> bool:
    """Remove the oldest two messages after the first ``keep`` (one exchange, so the roles still
    alternate); False when there is no whole exchange left to drop."""
    if len(messages) < keep + 3:  # keep the newest message, which the model answers
        return False
    del messages[keep : keep + 2]
    return True
