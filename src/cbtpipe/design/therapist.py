"""The therapist's system message: built here and only here, for training and evaluation alike."""

from __future__ import annotations


def therapist_system(base: str, *, protocol: str = "", context: str = "") -> str:
    """The therapist's system message: the base prompt, then the risk protocol with its crisis
    resources (evaluation only, when the rollout uses one: rollout.risk_protocol), then the
    session's course context (the history of the patient's earlier sessions). The training
    dataset (stages.dataset.to_chat) and the simulated sessions (stages.rollout.run_session)
    both call this, so a CBT model meets in evaluation the prompt it was trained under, plus only
    what the design adds on purpose."""
    return "\n\n".join(p for p in (base.strip(), protocol.strip(), context) if p)
