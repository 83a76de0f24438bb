"""Training checkpoints that survive a kill: a checkpoint counts only once it carries its completion
mark, and a re-run resumes from the last complete one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("cbtpipe")


CHECKPOINT_MARK = "cbt-complete.json"


def checkpoint_state(d: Path) -> str:
    """'complete', 'incomplete' (provably: a kill landed while it was being saved) or 'damaged'.

    The Trainer writes a checkpoint's files with trainer_state.json last, then calls on_save, which
    writes CHECKPOINT_MARK with every file's size. With the mark, the files must match it (else the
    checkpoint was damaged after it was finished). Without it, a missing or half-written
    trainer_state.json proves the save never finished; a whole one means the kill landed between
    the Trainer's save and the mark, and the checkpoint is complete."""

    mark = d / CHECKPOINT_MARK
    if mark.exists():
        try:
            files = json.loads(mark.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "damaged"
        ok = all((d / n).is_file() and (d / n).stat().st_size == size for n, size in files.items())
        return "complete" if ok else "damaged"
    try:
        json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "incomplete"
    except ValueError:
        return "incomplete"
    except OSError:
        return "damaged"
    return "complete"


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint. One whose save was cut off is deleted (it is provably
    incomplete); one damaged after it was finished is moved aside with a warning, never deleted."""
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if not d.is_dir() or not d.name.split("-")[-1].isdigit():
            continue
        state = checkpoint_state(d)
        if state == "incomplete":
            log.warning("checkpoint %s is incomplete (killed while saving): deleted, training goes on from the one before", d)
            shutil.rmtree(d, ignore_errors=True)
            continue
        if state == "damaged":
            aside = d.with_name(d.name + ".unreadable")
            shutil.rmtree(aside, ignore_errors=True)
            d.rename(aside)
            log.warning("checkpoint %s does not match its completion mark (damaged after saving): moved to %s", d, aside.name)
            continue
        found.append((int(d.name.split("-")[-1]), d))
    return str(max(found)[1]) if found else None
