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
import html
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
    e = html.escape
    items = rubric["items"]
    lo, hi = min(i["min"] for i in items), max(i["max"] for i in items)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Rating packet</title>',
        "<style>",
        "body{font-family:Georgia,serif;max-width:52em;margin:2em auto;line-height:1.45;color:#111}",
        "section.transcript{page-break-before:always;border-top:2px solid #444;padding-top:1em}",
        ".turn{margin:.35em 0}.who{font-weight:bold}.context{background:#f3f3f3;padding:.6em;white-space:pre-wrap}",
        "table{border-collapse:collapse;width:100%;margin-top:1em}td,th{border:1px solid #999;padding:.3em;vertical-align:top;font-size:.9em}",
        ".anchors{font-size:.85em;color:#333}label{margin-right:.5em;white-space:nowrap}",
        "@media print{button{display:none}}",
        "</style></head><body>",
        f"<h1>Rating packet {e(packet_id)}</h1>",
        f"<p>{len(rows)} therapy session transcripts, each to be rated on the {e(rubric['name'])} "
        f"({len(items)} items, {lo} to {hi}). The transcripts are in random order under rating ids; "
        "nothing in them says which system produced them. Rate each item from the transcript alone, "
        "then save the form as CSV (the button at the end) or fill in ratings_template.csv.</p>",
        '<p><label>Rater: <input id="rater" name="rater" size="20"></label></p>',
    ]
    for r in rows:
        rid = e(r["rating_id"])
        out.append(f'<section class="transcript" id="{rid}"><h2>Transcript {rid}</h2>')
        if r["context"]:
            out.append(f'<p>What the therapist knew from earlier sessions:</p><div class="context">{e(r["context"])}</div>')
        for role, text in r["turns"]:
            out.append(f'<p class="turn"><span class="who">{e(role.capitalize())}:</span> {e(text)}</p>')
        out.append("<table><tr><th>Item</th><th>Anchors</th><th>Score</th></tr>")
        for it in items:
            name = f"{rid}__{it['id']}"
            radios = "".join(
                f'<label><input type="radio" name="{e(name)}" value="{v}">{v}</label>' for v in range(it["min"], it["max"] + 1)
            )
            out.append(
                f"<tr><td><b>{e(it['name'])}</b><br>{e(it.get('description', ''))}</td>"
                f'<td class="anchors">{e(_anchors(it))}</td><td>{radios}</td></tr>'
            )
        out.append("</table></section>")
    ids = [r["rating_id"] for r in rows]
    out += [
        '<p><button type="button" onclick="saveCsv()">Save ratings as CSV</button></p>',
        "<script>",
        f"const PACKET={packet_id!r}, IDS={ids!r}, ITEMS={[i['id'] for i in items]!r};",
        "function saveCsv(){const rater=document.getElementById('rater').value.replace(/[\",\\n]/g,' ');"
        "let lines=['packet_id,rating_id,item,score,rater'];"
        "for(const id of IDS){for(const it of ITEMS){const c=document.querySelector('input[name=\"'+id+'__'+it+'\"]:checked');"
        "lines.push([PACKET,id,it,c?c.value:'',rater].join(','));}}"
        "const a=document.createElement('a');a.href=URL.createObjectURL(new Blob([lines.join('\\n')+'\\n'],{type:'text/csv'}));"
        "a.download='ratings_'+PACKET+'.csv';a.click();}",
        "</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


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
