"""A small rehearsal of the study's API traffic (tools/rehearsal.py is the benchmark): real
llama.cpp servers behind a proxy with latency and injected 429/503 faults, the pipeline's
generation and safety judging at concurrency 1 and 3. Outputs must be identical, the calls in
flight bounded by the concurrency, and every fault retried."""

from cbtpipe.rehearsal import rehearse


def test_a_small_rehearsal_gives_identical_outputs_with_bounded_calls_in_flight(root, tiny_gguf, tmp_path):
    res = rehearse(root, gguf=tiny_gguf, levels=(1, 3), latency_s=0.1, fault_rate=0.2, servers=1, patients=3, sessions=2, log_dir=tmp_path)
    assert res["identical_outputs"]
    one, three = res["levels"][1], res["levels"][3]
    for stage in ("generation", "judging"):
        assert one[stage]["max_in_flight"] == 1 and 2 <= three[stage]["max_in_flight"] <= 3
        for lvl in (one, three):
            r = lvl[stage]
            assert r["retries"] >= r["faults_injected"]  # every injected fault was retried, none lost
            assert r["requests_seen"] == r["calls"] + r["retries"]
    assert sum(lvl[s]["faults_injected"] for lvl in (one, three) for s in ("generation", "judging")) >= 1
