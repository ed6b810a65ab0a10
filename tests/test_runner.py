"""The streaming loop (builder.runner): a record's next request goes out as soon as the answer it depends
on exists, answers are committed in small transactions and never twice, truncated answers are retried
with a larger budget or rejected, and a store answered by the rehearsal's engine double stays apart.

The backend here is a small deterministic one written for the test (it answers in arrival order,
`per_poll` at a time, like an engine finishing a few sequences per step); the real engine is
exercised by the builds in test_build.py and test_crash.py."""
from __future__ import annotations

import dataclasses
import sys

import pandas as pd
import pytest

from builder.recipe import ModelConfig, RoleConfig
from builder.runner import RunnerConfig, StoreRunner, request_for
from builder.store import RequestStore, StoreError
from generation.backends import Result
from generation.flow import Ask
from generation.pairs import build_pairs

from .helpers import ROOT


class Backend:
    capacity = 8

    def __init__(self, text=None, finish=None, per_poll: int = 3):
        self.text = text or (lambda req: _answer(req))
        self.finish = finish or (lambda req: "stop")
        self.per_poll, self.queue, self.log = per_poll, [], []

    def submit(self, requests):
        assert len(self.queue) + len(requests) <= self.capacity, "more in flight than capacity"
        self.queue += requests
        self.log += [("submit", r) for r in requests]

    def poll(self):
        done, self.queue = self.queue[:self.per_poll], self.queue[self.per_poll:]
        self.log += [("done", r) for r in done]
        return [Result(r.id, self.text(r), 10, len(self.text(r).split()), self.finish(r)) for r in done]


def _answer(req) -> str:
    system = req.messages[0]["content"]
    if "SUGGESTIONS:" in system:
        return f"EVALUATION: fine {req.seed}\nSUGGESTIONS: shorter {req.seed}"
    if "REVISED PREFERENCE:" in system:
        return f"REVISED PREFERENCE: better answer {req.seed}"
    return f"an answer {req.seed}"


def runner(tmp_path, backend, chunk_size=4, truncated="retry", max_model_len=4096):
    roles = {r: RoleConfig(model="m", max_tokens=16) for r in ("responder", "critic", "reviser")}
    cfg = RunnerConfig(seed=1, models={"m": ModelConfig(id="test/m", max_model_len=max_model_len)}, roles=roles,
                       chunk_size=chunk_size, max_attempts=3, truncated=truncated)
    return StoreRunner(cfg, RequestStore(tmp_path / "requests.sqlite"), lambda m: backend, {"m": "rev"})


def inputs(n_personas=4, n_prompts=5):
    personas = pd.DataFrame({"persona_id": [f"p{i}" for i in range(n_personas)],
                             "persona": [f"Person {i}, who likes {i}." for i in range(n_personas)]})
    prompts = pd.DataFrame({"prompt_id": [f"q{j}" for j in range(n_prompts)],
                            "text": [f"Question {j}?" for j in range(n_prompts)]})
    assignment = pd.DataFrame([{"pair_id": f"p{i}-q{j}", "persona_id": f"p{i}", "prompt_id": f"q{j}", "split": "train"}
                               for i in range(n_personas) for j in range(n_prompts)])
    return personas, prompts, assignment


def test_a_pairs_next_request_goes_out_before_the_stage_ends(tmp_path):
    backend = Backend()
    result = build_pairs(*inputs(), runner(tmp_path, backend))
    assert len(result.table) == 20 and not result.rejects
    sent = [r.messages[0]["content"] for kind, r in backend.log if kind == "submit"]
    role = ["reviser" if "REVISED PREFERENCE:" in s else "critic" if "SUGGESTIONS:" in s else "responder" for s in sent]
    # streaming: revisions start while critiques are still being asked for
    assert role.index("reviser") < len(role) - 1 - role[::-1].index("critic")
    # and the persona-major order holds: the first persona's requests all go out before the last persona's
    owner = [next(i for i in range(4) if f"Person {i}," in s) for s in sent if "Person" in s]
    assert owner.index(3) > max(k for k, o in enumerate(owner) if o == 0) - 8


def test_resume_answers_from_the_store_and_stores_nothing_twice(tmp_path):
    first = build_pairs(*inputs(), runner(tmp_path, Backend()))
    again = Backend()
    second = build_pairs(*inputs(), runner(tmp_path, again))
    assert again.log == [] and second.table.equals(first.table)
    store = RequestStore(tmp_path / "requests.sqlite")
    assert store.count() == 5 + 20 + 20  # one answer per prompt, one critique and one revision per pair


def test_a_killed_loop_loses_only_its_uncommitted_answers(tmp_path):
    class Dies(Backend):
        def poll(self):
            if sum(kind == "done" for kind, _ in self.log) >= 17:
                raise KeyboardInterrupt  # the process dies here: nothing after this line runs
            return super().poll()

    dies = Dies()
    with pytest.raises(KeyboardInterrupt):
        build_pairs(*inputs(), runner(tmp_path, dies, chunk_size=4))
    answered = sum(kind == "done" for kind, _ in dies.log)
    kept = RequestStore(tmp_path / "requests.sqlite").count()
    assert answered - 4 < kept <= answered  # less than one chunk (chunk_size answers) lost
    resumed = Backend()
    result = build_pairs(*inputs(), runner(tmp_path, resumed))
    assert len(resumed.log) // 2 == 45 - kept  # only the rest is asked for
    reference = build_pairs(*inputs(), runner(tmp_path / "ref", Backend()) if (tmp_path / "ref").mkdir() is None else None)
    assert result.table.equals(reference.table)


def test_a_truncated_answer_is_retried_with_a_larger_budget_then_rejected(tmp_path):
    # answers stop at max_tokens until the budget reaches 64: 16 -> 32 -> 64 (same seed, continued)
    backend = Backend(finish=lambda req: "stop" if req.max_tokens >= 64 else "length")
    run = runner(tmp_path, backend)
    out = run("responder", [build_ask("a")])["a"]
    budgets = [r.max_tokens for kind, r in backend.log if kind == "submit"]
    seeds = {r.seed for kind, r in backend.log if kind == "submit"}
    assert out.ok and budgets == [16, 32, 64] and len(seeds) == 1 and out.attempts == 3

    never = Backend(finish=lambda req: "length")
    run = runner(tmp_path / "b", never) if (tmp_path / "b").mkdir() is None else None
    out = run("responder", [build_ask("a")])["a"]
    assert not out.ok and out.reason.startswith("truncated") and out.text
    assert run.summary()["responder"]["rejects"] == {"truncated": 1}


def test_a_roles_max_attempts_overrides_the_recipes(tmp_path):
    """roles.reviser.max_attempts = 2: one retry at twice the budget, then the reject; other roles keep 3."""
    backend = Backend(finish=lambda req: "length")
    run = runner(tmp_path, backend)
    run.cfg = dataclasses.replace(run.cfg, roles={**run.cfg.roles, "reviser": RoleConfig(model="m", max_tokens=16,
                                                                                       max_attempts=2)})
    revised, answered = run("reviser", [build_ask("a")])["a"], run("responder", [build_ask("b")])["b"]
    budgets = [r.max_tokens for kind, r in backend.log if kind == "submit"]
    assert budgets == [16, 32, 16, 32, 64]
    assert (revised.ok, revised.attempts, answered.ok, answered.attempts) == (False, 2, False, 3)


def test_retries_and_the_tokens_they_threw_away_are_counted_per_role_and_stored(tmp_path):
    class Cut(Backend):  # a cut-off answer is exactly max_tokens long
        def poll(self):
            budget = {q.id: q.max_tokens for q in self.queue}
            return [dataclasses.replace(r, output_tokens=budget[r.id]) if r.finish_reason == "length" else r
                    for r in super().poll()]

    backend = Cut(finish=lambda req: "stop" if req.max_tokens >= 64 else "length")
    run = runner(tmp_path, backend)
    assert run("responder", [build_ask("a")])["a"].ok
    got = run.summary()["responder"]
    assert got["retries"] == 2 and got["retry_output_tokens"] == 16 + 32  # decoded twice from token zero
    again = runner(tmp_path, Backend())  # resumed: the count comes from the store, not from this process
    again("responder", [build_ask("a")])
    assert again.summary()["responder"]["retry_output_tokens"] == 48


def test_the_budget_never_grows_past_the_models_context(tmp_path):
    backend = Backend(finish=lambda req: "length")
    run = runner(tmp_path, backend, max_model_len=30)  # 10 prompt tokens: room for 19
    out = run("responder", [build_ask("a")])["a"]
    budgets = [r.max_tokens for kind, r in backend.log if kind == "submit"]
    assert budgets == [16, 19] and not out.ok and out.reason.startswith("truncated")


def test_keep_truncated_keeps_and_counts_them(tmp_path):
    run = runner(tmp_path, Backend(finish=lambda req: "length"), truncated="keep")
    out = run("responder", [build_ask("a"), build_ask("b")])
    assert all(o.ok for o in out.values())
    assert run.summary()["responder"]["truncated_kept"] == 2


def _need(key: str):
    from generation.flow import Need
    return Need("responder", build_ask(key))


def _strict(text: str) -> str:
    """A parser that has grown stricter since the answers were stored: it rejects seed-ending answers."""
    if text.endswith("7"):
        raise ValueError("strict: ends in 7")
    return text


def test_a_stored_answer_todays_parser_rejects_is_asked_again_not_a_traceback(tmp_path, capfd):
    from generation.ids import derive_seed
    asks = [build_ask(f"k{i}") for i in range(30)]
    first = runner(tmp_path, Backend())("responder", asks)            # any text passes
    failing = {k for k, o in first.items() if o.text.endswith("7")}
    assert failing and all(o.attempts == 1 for o in first.values())

    again = Backend()
    run = runner(tmp_path, again)
    second = run("responder", asks, _strict)
    asked = [r for kind, r in again.log if kind == "submit"]
    # only the rejected ones are asked again, each with its next attempt's seed, as a fresh parse failure is
    key = lambda r: r.messages[0]["content"][len("Say "):-1]  # noqa: E731
    firsts = {key(r): r.seed for r in reversed(asked)}
    assert set(firsts) == failing
    assert all(seed == derive_seed(derive_seed(1, "responder", k), "retry", 1) for k, seed in firsts.items())
    assert all(o.ok and o.attempts == 1 and o.text == first[k].text for k, o in second.items() if k not in failing)
    assert all(o.attempts >= 2 and (o.ok or o.reason == "strict: ends in 7") for k, o in second.items() if k in failing)
    assert "failed today's parser" in capfd.readouterr().err
    st = run.summary()["responder"]
    assert st["requests"] == 30 and st["ok"] + sum(st["rejects"].values()) == 30

    # the new outcomes replaced the old rows: a third run asks nothing and gets the same outcomes
    third = Backend()
    assert runner(tmp_path, third)("responder", asks, _strict) == second and third.log == []


def test_a_stored_answer_with_no_attempts_left_becomes_a_reject(tmp_path):
    asks = [build_ask(f"k{i}") for i in range(30)]
    import dataclasses
    run = runner(tmp_path, Backend())
    run.cfg = dataclasses.replace(run.cfg, max_attempts=1)
    first = run("responder", asks)
    failing = {k for k, o in first.items() if o.text.endswith("7")}
    again = Backend()
    run = runner(tmp_path, again)
    run.cfg = dataclasses.replace(run.cfg, max_attempts=1)
    out = run("responder", asks, _strict)
    assert again.log == []                                              # nothing asked: no attempts left
    assert {k for k, o in out.items() if not o.ok} == failing
    assert all(out[k].reason == "strict: ends in 7" and out[k].text == first[k].text for k in failing)
    assert run.summary()["responder"]["rejects"] == {"strict": len(failing)}
    stored = RequestStore(tmp_path / "requests.sqlite")
    rows = stored.get_many([run.request(_need(k)).id for k in failing])
    assert len(rows) == len(failing) and not any(r.ok for r in rows.values())   # recorded, not only returned


def test_a_changed_byte_inside_a_stored_answer_is_asked_again(tmp_path, capfd):
    """quick_check sees SQLite's structure only: one byte changed inside an answer's text is found by
    the row's digest, the answer is treated as missing (a WARNING with a count) and asked again."""
    asks = [build_ask(f"k{i}") for i in range(3)]
    run = runner(tmp_path, Backend())
    first = run("responder", asks)
    rid = run.request(_need("k1")).id
    run.store.close()                                                   # checkpointed into the main file
    db = tmp_path / "requests.sqlite"
    data = bytearray(db.read_bytes())
    at = data.find(first["k1"].text.encode())
    assert at > 0 and data.find(first["k1"].text.encode(), at + 1) == -1
    data[at + 1] ^= 0x01                                                # "an answer" -> "ao answer"
    db.write_bytes(bytes(data))
    (tmp_path / "requests.sqlite-wal").unlink(missing_ok=True)
    capfd.readouterr()

    again = Backend()
    store = RequestStore(db)                                            # quick_check passes
    out = StoreRunner(run.cfg, store, lambda m: again, {"m": "rev"})("responder", asks)
    assert [r.id for kind, r in again.log if kind == "submit"] == [rid]
    assert out == first                                                 # the same answer, not the changed one
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"request {rid}" in warnings[0] and "do not match their digest" in warnings[0]
    assert store.damaged == 1 and store.count() == 3
    assert RequestStore(db).get_many([rid])[rid].text == first["k1"].text   # the row was replaced


def build_ask(key):
    from generation.flow import Ask
    return Ask(key=key, messages=[{"role": "user", "content": f"Say {key}."}])


def _double():
    sys.path.insert(0, str(ROOT / "bench"))
    from double import Double
    return Double()


def test_the_engine_double_never_mixes_with_real_answers(tmp_path):
    real = runner(tmp_path, Backend())
    real("responder", [build_ask("a")])
    with pytest.raises(StoreError, match="holds real answers"):
        runner(tmp_path, _double())("responder", [build_ask("b")])

    rehearsal = runner(tmp_path / "r", _double()) if (tmp_path / "r").mkdir() is None else None
    assert rehearsal("responder", [build_ask("a")])["a"].ok
    with pytest.raises(StoreError, match="engine double"):
        runner(tmp_path / "r", Backend())("responder", [build_ask("b")])


def test_answers_before_a_backend_failure_are_kept(tmp_path):
    from generation.errors import PersonaError

    class GivesUp(Backend):
        def poll(self):
            if sum(kind == "done" for kind, _ in self.log) >= 7:
                raise PersonaError("the server is gone")
            return super().poll()

    backend = GivesUp()
    with pytest.raises(PersonaError):
        build_pairs(*inputs(), runner(tmp_path, backend, chunk_size=100))
    answered = sum(kind == "done" for kind, _ in backend.log)
    assert RequestStore(tmp_path / "requests.sqlite").count() == answered  # nothing checked is lost


# ------------------------------------------------------------------ answers are reused from the same engine only

ASKS = [Ask(f"k{i}", [{"role": "user", "content": f"question {i}"}]) for i in range(6)]


def _config(model: ModelConfig) -> RunnerConfig:
    return RunnerConfig(seed=1, models={"m": model}, roles={"responder": RoleConfig(model="m", max_tokens=16)})


def test_a_dtype_change_reuses_no_stored_answer_and_a_scheduling_change_all(tmp_path):
    def asked(**model) -> int:
        """How many of ASKS reached the backend (the rest were answered from the store)."""
        backend = Backend()
        store = RequestStore(tmp_path / "requests.sqlite")
        StoreRunner(_config(ModelConfig(id="test/m", **model)), store, lambda m: backend, {"m": "rev"})("responder", ASKS)
        store.close()
        return sum(kind == "submit" for kind, _ in backend.log)

    assert asked(dtype="float32") == 6
    assert asked(dtype="float32") == 0
    # the KV cache, the batch and the prefill budget decide what runs together, not what one request computes
    assert asked(dtype="float32", kv_cache_gib=2, max_num_seqs=8, max_num_batched_tokens=8192,
                 enable_chunked_prefill=True, enforce_eager=True) == 0
    assert asked(dtype="bfloat16") == 6   # other arithmetic: nothing reused
    assert asked(dtype="float32") == 0    # and the float32 answers are still there for a float32 build


def test_request_ids_hold_the_engine_fingerprint(monkeypatch):
    base = ModelConfig(id="test/m", dtype="float32")
    rid = lambda m: request_for(_config(m), "responder", ASKS[0], "rev").id  # noqa: E731
    other = [dataclasses.replace(base, **change) for change in (
        {"dtype": "bfloat16"}, {"quantization": "awq"}, {"tensor_parallel_size": 2}, {"max_model_len": 2048},
        {"server": "http://gpu1:8000/v1"})]   # a server: its vLLM is not this process's
    assert len({rid(m) for m in [base, *other]}) == 1 + len(other)
    same = [dataclasses.replace(base, **change) for change in (
        {"kv_cache_gib": 4.0}, {"max_num_seqs": 64}, {"max_num_batched_tokens": 16384}, {"enable_chunked_prefill": True},
        {"enforce_eager": False}, {"timeout_s": 5.0}, {"license": "x", "why": "y"})]
    assert {rid(m) for m in same} == {rid(base)}
    served, local = rid(other[-1]), rid(base)
    monkeypatch.setattr("builder.backends.vllm_version", lambda: "vllm 0.33.0")   # an upgraded vLLM
    assert rid(base) != local and rid(other[-1]) == served
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")                                # other kernels
    upgraded = request_for(_config(base), "responder", ASKS[0], "rev").id
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    assert upgraded != rid(base)


def test_a_roles_system_text_joins_its_requests_and_only_its_own(tmp_path):
    """roles.<role>.system (configs/cpu.toml asks SmolLM2 for short answers with it): a system message before a
    bare question, appended to a stage's own system message (the persona stays first), and nothing else changed."""
    cfg = runner(tmp_path, Backend()).cfg
    brief = {role: dataclasses.replace(rc, system="Be brief.") for role, rc in cfg.roles.items() if role != "reviser"}
    short = dataclasses.replace(cfg, roles={**cfg.roles, **brief})
    question = [{"role": "user", "content": "Q?"}]
    persona = [{"role": "system", "content": "PERSONA:\nAda"}, {"role": "user", "content": "Q?"}]
    assert request_for(short, "responder", Ask("r", question), "rev").messages == [
        {"role": "system", "content": "Be brief."}, *question]
    assert request_for(short, "critic", Ask("c", persona), "rev").messages == [
        {"role": "system", "content": "PERSONA:\nAda\n\nBe brief."}, persona[1]]
    assert request_for(short, "reviser", Ask("c", persona), "rev") == request_for(cfg, "reviser", Ask("c", persona), "rev")
    assert request_for(cfg, "responder", Ask("r", question), "rev").messages == question
    assert request_for(short, "responder", Ask("r", question), "rev").id != request_for(cfg, "responder", Ask("r", question), "rev").id
