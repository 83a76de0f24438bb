import json

import pytest

from cbtpipe.design import describe, eval_profiles, load_attributes, train_val_profiles
from cbtpipe.workflow import PipelineError, hash_obj

ATTRS = "resources/patient_attributes.yaml"


def test_same_seed_same_profiles_byte_for_byte(root):
    attrs = load_attributes(root / ATTRS)
    a = train_val_profiles(attrs, 5, 2, seed=3)
    b = train_val_profiles(attrs, 5, 2, seed=3)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = train_val_profiles(attrs, 5, 2, seed=4)
    assert json.dumps(a) != json.dumps(c)


def test_train_val_eval_disjoint(root):
    attrs = load_attributes(root / ATTRS)
    train, val = train_val_profiles(attrs, 20, 5, seed=1)
    ev = eval_profiles(attrs, 20, 1, train + val)
    content = lambda p: hash_obj({k: v for k, v in p.items() if k not in ("id", "split", "seed")})  # noqa: E731
    assert not {content(p) for p in train + val} & {content(p) for p in ev}
    ids = [p["id"] for p in train + val + ev]
    assert len(ids) == len(set(ids))
    assert {p["split"] for p in train} == {"train"} and {p["split"] for p in val} == {"val"}


def test_profile_has_cognitive_model_and_style(root):
    attrs = load_attributes(root / ATTRS)
    (p,), _ = train_val_profiles(attrs, 1, 1, seed=0)
    for key in (
        "core_belief",
        "intermediate_belief",
        "automatic_thoughts",
        "coping_strategy",
        "situation",
        "conversational_style",
        "phq9_band",
    ):
        assert key in p
    assert p["core_belief"]["category"] in {"helpless", "unlovable", "worthless"}
    assert p["conversational_style"]["name"] in describe(p)


def test_bad_attribute_files(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("age_band: [1]\n")
    with pytest.raises(PipelineError, match="a.yaml, line 1: 'gender' is a required property"):
        load_attributes(f)
    with pytest.raises(PipelineError, match="does not exist"):
        load_attributes(tmp_path / "missing.yaml")
    f.write_text("a: [\n")
    with pytest.raises(PipelineError, match="invalid YAML"):
        load_attributes(f)
