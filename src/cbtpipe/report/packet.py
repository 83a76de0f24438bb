"""A blinded rating packet for human raters, and the import of their ratings.

The packet holds a subset of the judged sessions under shuffled ids (R001, R002, ...), with no
model, arm, quantization, session or patient id and no patient attributes; words that could name
a model (``rating_packet.redact`` and every model's name) are replaced in the transcripts. It is a
printable HTML form (with a button that saves the filled form as CSV) and a CSV template with the
rubric's items and anchors. The key that maps each rating id back to its session is written apart
(``results/rating_key/``), never into the packet. Importing a filled CSV maps the ids back through
the key; a packet id ties the ratings to the packet they were made on, so ratings of an older
packet are refused rather than attached to other transcripts.
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path
from typing import Any

from ..workflow import PipelineError, atomic_write_text, hash_obj, read_csv_rows

KEY_FIELDS = ["packet_id", "rating_id", "session_id", "model", "arm", "quantization", "patient_id", "position", "transcript_sha256"]
TEMPLATE_FIELDS = ["packet_id", "rating_id", "item", "item_name", "anchors", "score", "rater"]


def select_sessions(sessions: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` sessions with turns (all of them when ``n`` is None), drawn in turn from every
    (model, arm) group so that each is represented alike, then shuffled: the order says nothing
    about the group."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in sorted((s for s in sessions if s["messages"]), key=lambda s: s["session_id"]):
        groups.setdefault((s["model"], s["arm"]), []).append(s)
    for g in groups.values():
        rng.shuffle(g)
    picked: list[dict[str, Any]] = []
    total = sum(len(g) for g in groups.values())
    want = total if n is None else min(n, total)
    while len(picked) < want:
        for key in sorted(groups):
            if groups[key] and len(picked) < want:
                picked.append(groups[key].pop())
    rng.shuffle(picked)
    return picked


def redactor(terms: list[str]):
    """A function that replaces every term (case-insensitive, also inside longer words such as
    'SmolLM2') with '[redacted]'."""
    terms = sorted({t for t in terms if t.strip()}, key=len, reverse=True)
    if not terms:
        return lambda text: text
    pat = re.compile("|".join(re.escape(t) for t in terms), re.I)
    return lambda text: pat.sub("[redacted]", text)


def _anchors(item: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in item.get("anchors", {}).items())


def build_packet(
    sessions: list[dict[str, Any]],
    rubric: dict[str, Any],
    pcfg: dict[str, Any],
    models: list[str],
    packet_dir: str | Path,
    key_path: str | Path,
) -> dict[str, Any]:
    """Write the packet (``packet.html``, ``ratings_template.csv``) and the key; returns a summary."""
    chosen = select_sessions(sessions, pcfg["sessions"], pcfg["seed"])
    redact = redactor([*pcfg["redact"], *models])
    rows = []
    for k, s in enumerate(chosen, 1):
        rows.append(
            {
                "rating_id": f"R{k:03d}",
                "session": s,
                "turns": [(m["role"], redact(m["content"])) for m in s["messages"]],
                "context": redact(s.get("course_context") or ""),
            }
        )
    key = [
        {
            "rating_id": r["rating_id"],
            "session_id": r["session"]["session_id"],
            "model": r["session"]["model"],
            "arm": r["session"]["arm"],
            "quantization": r["session"].get("quantization", ""),
            "patient_id": r["session"]["patient_id"],
            "position": r["session"].get("position", 1),
            "transcript_sha256": hash_obj([r["turns"], r["context"]], 64),
        }
        for r in rows
    ]
    packet_id = hash_obj(key, 12)
    for k in key:
        k["packet_id"] = packet_id
    items = rubric["items"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TEMPLATE_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        for it in items:
            w.writerow(
                {
                    "packet_id": packet_id,
                    "rating_id": r["rating_id"],
                    "item": it["id"],
                    "item_name": it["name"],
                    "anchors": _anchors(it),
                    "score": "",
                    "rater": "",
                }
            )
    packet_dir, key_path = Path(packet_dir), Path(key_path)
    atomic_write_text(packet_dir / "ratings_template.csv", buf.getvalue())
    atomic_write_text(packet_dir / "packet.html", _html(rows, rubric, packet_id))
    kb = io.StringIO()
    kw = csv.DictWriter(kb, fieldnames=KEY_FIELDS, lineterminator="\n")
    kw.writeheader()
    kw.writerows(key)
    atomic_write_text(key_path, kb.getvalue())
    return {"packet_id": packet_id, "transcripts": len(rows), "items": len(items), "groups": sorted({(k["model"], k["arm"]) for k in key})}


def _html(rows: list[dict[str, Any]], rubric: dict[str, Any], packet_id: str) -> str:
    """The printable form: templates/packet.html.j2, HTML-escaped throughout (Jinja's autoescape)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cbtpipe", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    items = [{"description": "", **it} for it in rubric["items"]]
    lo, hi = min(i["min"] for i in items), max(i["max"] for i in items)
    return env.get_template("packet.html.j2").render(
        rows=rows, rubric=rubric, items=items, lo=lo, hi=hi, packet_id=packet_id, anchors=_anchors
    )


def load_packet_ratings(path: str | Path, key_path: str | Path, rubric: dict[str, Any]) -> list[dict[str, Any]]:
    """A filled packet CSV (packet_id, rating_id, item, score, rater: schemas/packet_ratings; blank
    scores are skipped) as human ratings of sessions, mapped back through the key. Ratings of
    another packet are refused. Errors name the file and line."""
    p, kp = Path(path), Path(key_path)
    key = {r["rating_id"]: r for r in csv.DictReader(kp.read_text(encoding="utf-8").splitlines())}
    packet_ids = {r["packet_id"] for r in key.values()}
    ids = {i["id"]: i for i in rubric["items"]}
    out = []
    for n, r in read_csv_rows(p, "packet_ratings"):
        where = f"{p}, line {n}"
        if r["packet_id"] not in packet_ids:
            raise PipelineError(
                f"{where}: packet {r['packet_id']!r} is not the current packet ({', '.join(sorted(packet_ids))}): "
                "these ratings were made on transcripts that have changed since"
            )
        if r["rating_id"] not in key:
            raise PipelineError(f"{where}: unknown rating id {r['rating_id']!r}")
        if r["item"] not in ids:
            raise PipelineError(f"{where}: unknown rubric item {r['item']!r}")
        if r["score"] is None:
            continue  # not rated: missing, never 0
        it, s = ids[r["item"]], r["score"]
        if not it["min"] <= s <= it["max"]:
            raise PipelineError(f"{where}: score {s} outside {it['min']}..{it['max']} for item {r['item']!r}")
        rater = (r.get("rater") or "").strip() or "human"
        out.append({"session_id": key[r["rating_id"]]["session_id"], "item": r["item"], "score": s, "rater": rater})
    return out
