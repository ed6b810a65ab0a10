"""The hard engine double (bench/hard_double.py): a build answered by it reports in its manifest and its
card exactly the faults the double injected (answers cut at max_tokens, prompts over max_model_len,
unparseable and schema-breaking JSON, missing headers, judge and classifier saying no, identical
revisions), its answers are deterministic per request and counted in real tokenizer tokens, and a real
build refuses its store like the plain double's."""
from __future__ import annotations

import sys

import pytest

from builder.store import StoreError
from generation.backends import ChatRequest
from generation.pairs import rejected_ask

from .helpers import ROOT, edited, recipe_data, write_recipe

sys.path.insert(0, str(ROOT / "bench"))
from hard_double import HardDouble, mismatches  # noqa: E402

# the paper's budgets (configs/paper.toml): the double's length tails cross them
MAX_TOKENS = {"persona_filler": 512, "consistency_judge": 160, "prompt_classifier": 64, "responder": 768,
              "critic": 512, "reviser": 768}


@pytest.fixture(scope="module")
def hard_build(tmp_path_factory, census_small, prism_file):
    """One small build (8 personas) answered by the hard double with every fault 16x likelier."""
    from builder.pipeline import build
    tmp = tmp_path_factory.mktemp("hard")
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}\n")  # the double needs no model: its revision is this folder
    data = edited(recipe_data(tmp / "model", personas=8, classify_limit=80, train_per_persona=4, n_train=3,
                              n_unseen=1, census=census_small, prism=prism_file),
                  {"pairs.structured": False, "output.truncated": "retry",
                   **{f"roles.{r}.max_tokens": n for r, n in MAX_TOKENS.items()}})
    recipe = write_recipe(tmp / "recipe.toml", data)
    double = HardDouble(prism_file, max_model_len=8192, time_scale=0, boost=16)
    manifest = build(str(recipe), out=str(tmp / "out"), work=str(tmp / "work"), backend_for=lambda m: double)
    return tmp, data, double, manifest


def test_the_manifest_and_card_report_exactly_the_injected_faults(hard_build):
    tmp, _, double, manifest = hard_build
    expected = double.expected()
    faults = double.faults()
    # every kind of fault happened at least once in this seeded build
    kinds = {k for role in faults.values() for k in role}
    assert {"truncated", "prompt_too_long", "invalid JSON", "$", "no", "identical",
            "missing SUGGESTIONS", "missing REVISED PREFERENCE"} <= kinds, faults
    assert sum(r["retries"] for r in expected["requests"].values()) > 0
    assert expected["judge_rejects"] > 0 and manifest["counts"]["personas_drawn"] > 8  # replacement rounds ran
    assert mismatches(manifest, expected) == []
    assert manifest["rehearsal"]  # marked: publish refuses it
    card = (tmp / "out" / "README.md").read_text()
    for role, r in expected["requests"].items():  # the card's request table, from the same counts
        rejected = sum(r["rejects"].values())
        row = (f"| {role} | {r['requests']:,} | {r['ok']:,} | {rejected:,} | {r['rejects'].get('truncated', 0):,} "
               f"| 0 | {r['retries']:,} | {r['retry_output_tokens']:,} | {r['prompt_tokens']:,} | {r['output_tokens']:,} |")
        assert row in card


def test_a_real_build_refuses_the_hard_doubles_store(hard_build):
    from builder.pipeline import build
    tmp, data, _, _ = hard_build

    class Real:  # any backend that is not a double
        capacity = 8

        def submit(self, requests):
            raise AssertionError("a real backend must not be asked to add to a rehearsal's store")

        def poll(self):
            return []

    recipe = write_recipe(tmp / "recipe2.toml", edited(data, {"seed": data["seed"] + 1}))  # new requests
    with pytest.raises(StoreError, match="engine double"):
        build(str(recipe), out=str(tmp / "out2"), work=str(tmp / "work"), backend_for=lambda m: Real())


def test_answers_depend_on_the_request_alone_and_count_real_tokens(prism_file):
    a = HardDouble(prism_file, time_scale=0)
    b = HardDouble(prism_file, time_scale=0)
    reqs = [ChatRequest(id=f"r{i}", messages=rejected_ask(f"p{i}", f"Is question {i} a hard one?").messages,
                        seed=i, max_tokens=768) for i in range(60)]
    a.submit(reqs)
    b.submit(reqs[::-1])  # another arrival order, the same answers
    got_a, got_b = {r.id: r for r in a.poll()}, {r.id: r for r in b.poll()}
    assert got_a == got_b
    for r in got_a.values():
        if r.finish_reason in ("stop", "length"):
            assert len(a.enc.encode_ordinary(r.text)) == r.output_tokens
    # a truncation retry (same seed, larger budget) continues the same answer
    cut = [r for r in got_a.values() if r.finish_reason == "length"]
    long = [q for q in reqs if q.id in {r.id for r in cut}]
    assert long, "no answer crossed max_tokens in this sample"
    c = HardDouble(prism_file, time_scale=0)
    c.submit([ChatRequest(**{**q.__dict__, "max_tokens": 8000}) for q in long])
    for r in c.poll():
        assert r.text.startswith(got_a[r.id].text)



@pytest.mark.parametrize("text, kind, debris", [
    ("fine text " * 200, "revision", None),
    ("an answer\nPERſONA: leaked", "revision", "PERſONA:"),      # not ASCII: the regex decides, as before
    ("an answer\n**Evaluation:** leaked", "revision", "**Evaluation:**"),
    ("an evaluation of the suggestion, revised", "revision", None),  # the words, but not as headers
    ("text with <|im_end|> in it", "critique", "<|im_end|>"),
    ("code {content} here", "critique", "{content}"),
])
def test_the_quick_tests_before_the_debris_regexes_change_no_verdict(text, kind, debris):
    """check_debris and _clean skip their regexes when a cheap test shows they cannot match (70B-sized
    answers made them ~0.3-1 ms each): the verdicts stay the regexes' own."""
    from generation.pairs import _clean, check_debris
    if debris is None:
        check_debris(text, kind)
    else:
        with pytest.raises(ValueError, match="template_debris"):
            check_debris(text, kind)
    assert _clean("an answer\n---\n***  ") == "an answer"
    assert _clean("  an answer ending in words ") == "an answer ending in words"
