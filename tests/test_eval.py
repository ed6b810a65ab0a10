"""`persona eval`: scoring rules on hand-made answers, then the real engine (tiny random-weight Llama)
on a whole build: reports, determinism, resume after SIGKILL, a published revision, bad inputs."""
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from builder import manifest as mf
from generation import evaluation as ev
from generation.flow import Outcome
from generation.personas import ATTRIBUTES

from .helpers import ROOT, ScriptedRun, env, kill_when, one_line_error, popen, run_py, stored

PROBED = ["age", "sex", "religion", "ideology"]


# ------------------------------------------------------------------ scoring, no model

def _pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame([{"pair_id": f"p{i:03d}", "persona_id": f"u{i % 7}", "prompt_id": f"q{i}",
                          "split": "test_seen" if i % 2 else "test_unseen", "persona": "age: 30\n",
                          "instruction": f"Question {i}?", "chosen": f"PREFERRED answer {i}",
                          "rejected": f"other answer {i}"} for i in range(n)])


def answering(pick):
    """A Run whose answer is `pick(user message)`: "A" or "B"."""
    return ScriptedRun(lambda role, ask, attempt: json.dumps({"preferred": pick(ask.messages[-1]["content"])}))


def _score(pairs, run, both_orders):
    asks = ev.pairwise_asks(pairs, 11, True, both_orders)
    rows = ev.score_pairwise(asks, run("subject", [a for a, _ in asks], json.loads))
    return rows, ev.summarize_pairwise(rows, 11, ("test_seen", "test_unseen"), resamples=200)["persona"]


def test_accuracy_follows_the_preferred_answer_not_the_position():
    pairs = _pairs(200)
    reads_content = answering(lambda user: "A" if user.index("PREFERRED") < user.index("Answer B:") else "B")
    rows, s = _score(pairs, reads_content, both_orders=True)
    # swapping the order flips the raw choice, and the accuracy stays perfect
    flips = rows.pivot(index="pair_id", columns="chosen_position", values="choice")
    assert (flips["A"] == "A").all() and (flips["B"] == "B").all()
    assert s["overall"]["value"] == 1.0 and s["position"]["order_consistency"] == 1.0
    assert s["position"]["share_choosing_A"] == 0.5

    always_a = answering(lambda user: "A")
    rows, s = _score(pairs, always_a, both_orders=False)
    shown_first = (rows.chosen_position == "A").mean()
    assert 0.4 < shown_first < 0.6  # the seeded order puts the chosen answer first about half the time
    assert s["overall"]["value"] == pytest.approx(shown_first, abs=1e-4)
    assert s["position"] == {"share_choosing_A": 1.0, "accuracy_when_chosen_is_A": 1.0,
                             "accuracy_when_chosen_is_B": 0.0, "n_chosen_A": int((rows.chosen_position == "A").sum()),
                             "n_chosen_B": int((rows.chosen_position == "B").sum())}
    _, s = _score(pairs, always_a, both_orders=True)
    assert s["overall"]["value"] == 0.5 and s["position"]["order_consistency"] == 0.0


def test_order_is_seeded_per_pair():
    pairs = _pairs(50)
    first = [m["chosen_position"] for _, m in ev.pairwise_asks(pairs, 1, True)]
    assert first == [m["chosen_position"] for _, m in ev.pairwise_asks(pairs, 1, True)]
    assert first == [m["chosen_position"] for _, m in ev.pairwise_asks(pairs.iloc[::-1], 1, True)][::-1]
    assert first != [m["chosen_position"] for _, m in ev.pairwise_asks(pairs, 2, True)]
    # the no-persona condition shows the same order and no persona
    plain = ev.pairwise_asks(pairs, 1, False)
    assert [m["chosen_position"] for _, m in plain] == first
    assert all("age: 30" not in json.dumps(a.messages) for a, _ in plain)


def test_leaving_one_attribute_out():
    text = "".join(f"{a.replace('_', ' ')}: value of {a}\n" for a in ATTRIBUTES)
    text = text.replace("value of lifestyle\n", "value of lifestyle\nsecond line of lifestyle\n")
    assert ev.split_persona(text)["lifestyle"] == "lifestyle: value of lifestyle\nsecond line of lifestyle\n"
    out = ev.without(text, "lifestyle")
    assert "lifestyle" not in out and out.count("\n") == len(ATTRIBUTES) - 1
    assert ev.without(text, "age") == text.split("\n", 1)[1]
    with pytest.raises(ValueError):
        ev.split_persona("no attribute here\n")


def test_generative_score_counts_failed_answers_as_needing_revision():
    judged = pd.DataFrame([
        {"mode": "baseline", "persona_id": "u1", "answer_ok": True, "verdict": ev.NO_REVISION},
        {"mode": "baseline", "persona_id": "u2", "answer_ok": True, "verdict": ev.NEEDS_REVISION},
        {"mode": "chain_of_thought", "persona_id": "u1", "answer_ok": False, "verdict": ev.NEEDS_REVISION},
        {"mode": "chain_of_thought", "persona_id": "u2", "answer_ok": True, "verdict": ev.NO_REVISION},
        {"mode": "chain_of_thought", "persona_id": "u3", "answer_ok": True, "verdict": None},  # judge failed
    ]).assign(verdict_swapped=None)  # judged without the label-order control
    s = ev.summarize_generative(judged, 3, resamples=200)
    assert s["modes"]["baseline"]["value"] == 0.5 and s["modes"]["baseline"]["n"] == 2
    assert s["modes"]["chain_of_thought"] == {**s["modes"]["chain_of_thought"], "value": 0.5, "n": 2,
                                              "answer_rejects": 1, "judge_rejects": 1}
    assert s["best_mode"] == ["baseline", "chain_of_thought"]


def test_label_order_control_tells_a_reading_judge_from_a_copying_one():
    items = pd.DataFrame([{"persona_id": f"u{i}", "prompt_id": f"q{i}", "persona": "age: 30\n",
                           "instruction": f"Question {i}?"} for i in range(6)])
    answers = {("output_only", f"u{i}", f"q{i}"): Outcome("k", True, {"answer": "GOOD" if i % 2 else "bad"}, "", None, 1, 0, 0)
               for i in range(6)}

    def judge(decide):
        return ScriptedRun(lambda role, ask, attempt: json.dumps({"reason": "r",
                                                                  "verdict": decide(ask.messages[-1]["content"])}))

    reads = judge(lambda user: ev.NO_REVISION if "GOOD" in user else ev.NEEDS_REVISION)
    rows = ev.judge_answers(items, answers, reads, label_control=True)
    assert rows.verdict.tolist() == rows.verdict_swapped.tolist() == [ev.NEEDS_REVISION, ev.NO_REVISION] * 3
    s = ev.summarize_generative(rows, 1, resamples=100)
    assert (s["label_order_consistency"], s["label_order_checked"], s["modes"]["output_only"]["value"]) == (1.0, 6, 0.5)

    copies_first = judge(lambda user: user.split('"verdict": "', 1)[1].split('"', 1)[0])
    s = ev.summarize_generative(ev.judge_answers(items, answers, copies_first, label_control=True), 1, resamples=100)
    assert s["label_order_consistency"] == 0.0 and s["modes"]["output_only"]["value"] == 0.0
    assert "label_order_consistency" not in ev.summarize_generative(ev.judge_answers(items, answers, reads), 1, 100)


# ------------------------------------------------------------------ the real engine

def eval_args(model, data, out, work, *extra) -> list:
    return ["-m", "builder.cli", "eval", "--data", data, "--model", model, "--dtype", "float32",
            "--kv-cache-gib", "0.25", "--max-tokens", "48", "--personas", "2", "--questions", "2",
            "--probe-personas", "2", "--attributes", ",".join(PROBED), "--both-orders", "--out", out,
            "--work", work, *extra]


@pytest.fixture(scope="module")
def evaluated(tiny_build, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    data = tiny_build[0] / "a" / "persona"
    p = run_py(eval_args(tiny_model, data, tmp / "out", tmp / "work"), timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    folder = next((tmp / "out").glob("*/local-*"))
    return tmp, data, folder


@pytest.mark.slow
def test_report_has_every_measure(evaluated):
    tmp, data, folder = evaluated
    report = json.loads((folder / "report.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    assert folder.name == f"local-{mf.sha256_file(data / 'SHA256SUMS')[:12]}"
    assert report["dataset"]["sha256sums"] == mf.sha256_file(data / "SHA256SUMS")
    assert report["dataset"]["recipe_fingerprint"] == manifest["fingerprint"]

    pairs = sum(manifest["splits"]["preferences"][s]["rows"] for s in ("test_seen", "test_unseen"))
    for cond in ("persona", "no_persona"):
        e = report["pairwise"][cond]
        assert e["overall"]["n"] + e["overall"]["rejects"] == 2 * pairs  # both orders
        for part in ("overall", "test_seen", "test_unseen"):
            lo, hi = e[part]["ci95"]
            assert 0 <= lo <= e[part]["value"] <= hi <= 1
        assert set(e["position"]) >= {"share_choosing_A", "accuracy_when_chosen_is_A", "order_consistency"}
    assert 0 <= report["generative"]["label_order_consistency"] <= 1
    assert list(report["generative"]["modes"]) == sorted(ev.MODES)
    for e in report["generative"]["modes"].values():
        assert e["n"] + e["judge_rejects"] == report["generative"]["items"] > 0
    probe = report["attribute_probe"]
    assert sorted(probe["attributes"]) == sorted(PROBED) and probe["items"] >= 1
    for e in probe["attributes"].values():
        assert e["n"] == probe["items"] and (e["kappa"] is None or -1 <= e["kappa"] <= 1)
    judge, subject = report["models"]["judge"], report["models"]["subject"]
    assert (judge["id"], judge["revision"]) == (subject["id"], subject["revision"])  # the judge defaults to the model
    assert judge["sampling"]["temperature"] == 0.0
    assert report["models"]["subject"]["sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 48}

    md = (folder / "report.md").read_text()
    assert "| persona |" in md and "| demographic_summary |" in md and "| religion |" in md
    assert (folder / "report.png").read_bytes().startswith(b"\x89PNG")
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    assert {i["eval"] for i in items} == {"pairwise", "generative", "attribute_probe"}

    p = run_py(["-m", "builder.cli", "eval", "--compare", folder, folder / "report.json"])
    assert p.returncode == 0 and "pairwise, persona, overall" in p.stdout, p.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three eval runs in a row (one cut short)
def test_same_seed_same_report_and_resume_after_kill(evaluated, tiny_model):
    tmp, data, folder = evaluated
    want = {f: (folder / f).read_bytes() for f in ("report.json", "report.md", "report.png", "items.jsonl")}

    proc = popen(eval_args(tiny_model, data, tmp / "out2", tmp / "work2"))
    kill_when(proc, lambda: stored(tmp / "work2", "subject", "eval/requests.sqlite") >= 1, "an answer was stored")
    assert not list((tmp / "out2").glob("*/*/report.json"))
    p = run_py(eval_args(tiny_model, data, tmp / "out2", tmp / "work2"), timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    again = next((tmp / "out2").glob("*/local-*"))
    assert {f: (again / f).read_bytes() for f in want} == want
    with sqlite3.connect(tmp / "work2" / "eval" / "requests.sqlite") as db:
        assert db.execute("SELECT count(*) FROM (SELECT role, key FROM results GROUP BY role, key "
                          "HAVING count(*) > 1)").fetchone()[0] == 0

    p = run_py(eval_args(tiny_model, data, tmp / "out3", tmp / "work2", "--seed", "5"), timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    other = json.loads(next((tmp / "out3").glob("*/local-*/report.json")).read_text())
    assert other["settings"]["seed"] == 5 and other["pairwise"] != json.loads(want["report.json"])["pairwise"]


@pytest.mark.slow
def test_published_revision_and_a_missing_one(evaluated, tiny_model, tmp_path):
    from tests.hub_server import HubServer

    tmp, data, folder = evaluated
    hub = HubServer(token="hf_EvalTestToken").start()
    try:
        hub_env = dict(HF_ENDPOINT=hub.url, HF_TOKEN="hf_EvalTestToken", HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
                       HF_HOME=tmp_path / "hf")

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=ROOT, env=env(**hub_env),
                                  capture_output=True, text=True, timeout=900)

        p = cli("publish", data, "--repo", "persona-test/persona", "--version", "v1.0.0")
        assert p.returncode == 0, p.stderr[-3000:]
        store = tmp / "work" / "eval" / "requests.sqlite"
        with sqlite3.connect(store) as db:
            before = db.execute("SELECT count(*) FROM results").fetchone()[0]
        p = cli(*eval_args(tiny_model, "unused", tmp_path / "out", tmp / "work",
                           "--repo", "persona-test/persona", "--revision", "v1.0.0")[2:])
        assert p.returncode == 0, p.stderr[-3000:]
        remote = json.loads(next((tmp_path / "out").glob("*/v1.0.0/report.json")).read_text())
        local = json.loads((folder / "report.json").read_text())
        assert remote["dataset"]["commit"] == hub.state.repos["persona-test/persona"].tags["v1.0.0"]
        assert remote["dataset"]["revision"] == "v1.0.0"
        # the same bytes as the local build: the very same requests, answered from the store
        assert {k: remote[k] for k in ("pairwise", "generative", "attribute_probe")} == \
               {k: local[k] for k in ("pairwise", "generative", "attribute_probe")}
        with sqlite3.connect(store) as db:
            assert db.execute("SELECT count(*) FROM results").fetchone()[0] == before

        p = cli(*eval_args(tiny_model, "unused", tmp_path / "out", tmp / "work",
                           "--repo", "persona-test/persona", "--revision", "v9.9.9")[2:])
        line = one_line_error(p)
        assert "v9.9.9" in line and "revision not found" in line and "published versions: v1.0.0" in line
        assert "hf_EvalTestToken" not in p.stdout + p.stderr
    finally:
        hub.stop()
    assert hub.state.unknown == []


def test_bad_inputs_are_one_clear_line(tmp_path, tiny_build):
    data = tiny_build[0] / "a" / "persona"
    # a verified build without the preferences config
    folder = tmp_path / "no-prefs"
    shutil.copytree(data, folder)
    shutil.rmtree(folder / "preferences")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"].pop("preferences")
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("preferences/")]
    manifest["counts"]["pairs"] = {s: 0 for s in manifest["counts"]["pairs"]}  # else verify: incomplete
    mf.write_manifest(folder, manifest)
    mf.write_sha256sums(folder)
    assert mf.verify_folder(folder) == []
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", folder]))
    assert "no 'preferences' config (it has: dpo, personas, prompts, rejects)" in line

    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", tmp_path]))
    assert f"{tmp_path}: not a PERSONA build (no manifest.json)" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", tmp_path / "absent"]))
    assert "no such dataset folder" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--repo", "org/persona"]))
    assert "needs --revision" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", data, "--attributes", "age,shoe_size"]))
    assert "'shoe_size' is not a PERSONA attribute" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", data, "--model", "./no/such/model"]))
    assert "no such folder" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--data", data, "--splits", "test_seen,validation"]))
    assert "has no split 'validation'" in line and "--splits" in line
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--compare", tmp_path]))
    assert "two or more" in line


def test_a_malformed_report_is_one_line_naming_the_key(tmp_path, capsys):
    """`eval --compare` reads only reports that fit eval_report.REPORT; anything else names file and key."""
    from builder.cli import main

    good = {"format": "persona-eval/1", "dataset": {"revision": "v1.0.0"},
            "models": {"subject": {"id": "m", "revision": "r"}, "judge": {"id": "m"}},
            "pairwise": {"persona": {"overall": {"value": 0.5, "ci95": [0.25, 0.75]}, "position": {"share_choosing_A": 0.5}}},
            "generative": {"modes": {"baseline": {"value": None, "ci95": None}}},
            "attribute_probe": {"attributes": {"age": {"kappa": None}}}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    cases = {
        "not JSON": ("{", "cannot read an evaluation report (JSONDecodeError: Expecting property name enclosed in "
                          "double quotes: line 1 column 2 (char 1))"),
        "a list": ("[1]", "not a persona evaluation report (expected a JSON object)"),
        "NaN": (json.dumps(good).replace("0.25", "NaN"), "cannot read an evaluation report (ValueError: NaN is not JSON)"),
        "no judge": ({**good, "models": {"subject": good["models"]["subject"]}}, "models.judge: missing"),
        "no dataset name": ({**good, "dataset": {}}, "dataset.sha256sums: missing (a report names a revision or a "
                                                     "local build's SHA256SUMS)"),
        "ci95 text": ({**good, "pairwise": {"persona": {"overall": {"value": 0.5, "ci95": "wide"}}}},
                      'pairwise.persona.overall.ci95: expected [low, high], got "wide"'),
        "bool value": ({**good, "generative": {"modes": {"baseline": {"value": True}}}},
                       "generative.modes.baseline.value: expected a number or null, got true"),
        "kappa text": ({**good, "attribute_probe": {"attributes": {"age": {"kappa": "high"}}}},
                       'attribute_probe.attributes.age.kappa: expected a number or null, got "high"'),
        "id null": ({**good, "models": {**good["models"], "judge": {"id": None}}},
                    "models.judge.id: expected a string, got null"),
    }
    for name, (report, expected) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(report if isinstance(report, str) else json.dumps(report))
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--compare", str(tmp_path / "good.json"), str(path)])
        assert exit_.value.code == 2, name
        assert capsys.readouterr().err == f"persona: error: {path}: {expected}\n", name
    main(["eval", "--compare", str(tmp_path / "good.json"), str(tmp_path / "good.json")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pairwise, persona, overall"))
    assert row.count("0.500 [0.250, 0.750]") == 2, row


def test_a_hostile_published_manifest_is_one_line(tmp_path):
    """eval --repo on a manifest listing no preference shard, or a shard that matches its sha256 but is not
    Parquet: one line each, no traceback, before any model is loaded."""
    from tests.hub_server import HubServer
    from tests.test_publish import build, put_build

    folder = tmp_path / "b"
    build(folder, seed=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = "preferences/test_seen-00000-of-00001.parquet"
    junk = b"not parquet, but the manifest's sha256 says it is the file"
    no_shards = {**manifest, "splits": {"preferences": {s: {**e, "files": []} for s, e in
                                                        manifest["splits"]["preferences"].items()}}}
    not_parquet = {**manifest, "files": [{**f, "bytes": len(junk), "sha256": hashlib.sha256(junk).hexdigest()}
                                         if f["path"] == shard else f for f in manifest["files"]]}
    hub = HubServer().start()
    try:
        hub.state.put("org/empty", {"manifest.json": json.dumps(no_shards).encode()}, tag="v1.0.0")
        put_build(hub, folder, "v0.1.0", repo="org/junk")
        hub.state.put("org/junk", {"manifest.json": json.dumps(not_parquet).encode(), shard: junk}, tag="v1.0.0")
        hub_env = dict(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=tmp_path / "hf")

        def eval_line(repo):
            p = subprocess.run([sys.executable, "-m", "builder.cli", "eval", "--repo", repo, "--revision", "v1.0.0",
                                "--splits", "test_seen", "--out", tmp_path / "out", "--work", tmp_path / "work"],
                               cwd=ROOT, env=env(**hub_env), capture_output=True, text=True, timeout=300)
            return one_line_error(p)

        assert eval_line("org/empty") == ("persona: error: org/empty@v1.0.0: the manifest lists no 'preferences' "
                                          "shard; evaluation needs the preference pairs")
        line = eval_line("org/junk")
        assert line.startswith(f"persona: error: org/junk@v1.0.0: {shard} is not a readable Parquet shard ("), line
    finally:
        hub.stop()
    assert hub.state.unknown == []
