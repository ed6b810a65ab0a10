"""The dataset card (README.md) and fidelity plot, rendered from the manifest (a plain dict).

Every number in the card comes from the manifest, so the card cannot drift from the data. Manifest
keys read here: name, version, demo, fingerprint, seed, models, versions, sources, counts, rejects,
fidelity, lengths, splits, features, and optionally repo_id, license, pretty_name, description,
load_path, examples, diversity, census_fidelity (basis, tvd_2way, population_records). `files` is not
read (the card is itself one of the files). Sections whose keys are missing are left out.

`fidelity` rows: {"attribute", "category", "population_share", "sample_share"}; an attribute's TVD is
computed from its rows (half the sum of absolute share differences).
"""
from __future__ import annotations

import io
from pathlib import Path
from string import Template

import yaml

TEMPLATE = Path(__file__).with_name("template.md")
DEFAULT_CONFIG = "preferences"
# What each config holds; only configs present in the manifest are described.
CONFIG_NOTES = {
    "preferences": "one row per persona × prompt pair: the persona, the question, the chosen and rejected "
                   "answers and the critique that led from one to the other.",
    "dpo": "the same pairs as TRL conversational `prompt` / `chosen` / `rejected` messages (persona in the "
           "system message), for DPO-style trainers.",
    "personas": "one row per persona: census attributes and the generated profile.",
    "prompts": "the PRISM opening prompts kept after filtering and classification, with their topic and pool.",
    "rejects": "every persona, prompt or pair a stage dropped, with the step, the reasons and the raw model output.",
}
SPLIT_NOTES = {
    "train": "every persona, each with prompts from the train pool",
    "test_seen": "the same personas, with other prompts of the train pool (prompts that other personas may "
                 "have in `train`)",
    "test_unseen": "the same personas, with prompts of the held-out pool (in no `train` row)",
}
PAIR_FIELDS = {
    "pair_id": "stable id of the pair (hash of persona and prompt ids)",
    "persona_id": "the persona (joins `personas`)",
    "prompt_id": "the prompt (joins `prompts`)",
    "split": "train, test_seen or test_unseen (as the split it is stored in)",
    "persona": "the persona's profile as text, as the critic and reviser saw it",
    "instruction": "the PRISM opening prompt",
    "rejected": "the responder's answer, written without the persona",
    "critique": "the critic's critique of `rejected` from the persona's point of view",
    "chosen": "the reviser's rewrite of `rejected` for the persona",
    "rejected_tokens": "tokens of `rejected` (the responder's tokenizer)",
    "chosen_tokens": "tokens of `chosen` (the reviser's tokenizer)",
    "rejected_model": "model id @ revision that wrote `rejected`",
    "chosen_model": "model id @ revision that wrote `chosen`",
    "prompt": "system message (the persona) + user message (the question)",
}
FIELD_NOTES = {
    "preferences": PAIR_FIELDS,
    "dpo": {**PAIR_FIELDS, "chosen": "one assistant message: the revised answer",
            "rejected": "one assistant message: the answer written without the persona"},
    "personas": {
        "persona_id": "stable id of the persona (hash of its census record and the seed)", "source_serialno": "ACS PUMS housing unit (SERIALNO)",
        "source_sporder": "person number within the housing unit (SPORDER)", "state": "US state",
        "big_five_scores": "Big Five levels, drawn (seeded)", "defining_quirks": "drawn from a curated list (seeded)",
        "mannerisms": "drawn from a curated list (seeded)", "core_values": "drawn from a curated list (seeded)",
        "imputed_fields": "census fields imputed by hot-deck (CA/TX narrow files)",
        "generated_fields": "census fields the census left empty and the persona_filler LLM wrote",
        "persona": "the whole profile as text (what the critic and reviser see)",
        "replacement_round": "0, or the round in which this persona replaced a rejected one",
        **{f: "written by the persona_filler LLM" for f in
           ("detailed_job_description", "personal_time", "lifestyle", "ideology", "political_views", "religion")},
    },
    "prompts": {"prompt_id": "stable id (hash of the normalised text)", "text": "the PRISM opening prompt",
                "topic": "topic given by the prompt_classifier LLM",
                "pool": "train (may appear in `train` / `test_seen`) or heldout (only in `test_unseen`)"},
    "rejects": {"stage": "personas, prompts or pairs", "id": "persona_id, prompt_id or pair_id",
                "step": "the step that dropped it (e.g. consistency, classify, critique)",
                "reasons": "why: every rule broken or the parse error (a list)",
                "raw": "the model's raw output, or null when no model was involved"},
}
CENSUS_FIELD = "census attribute (ACS PUMS, labelled)"
# The personas fields of a build from another country's census (a UK teaching file)
OTHER_CENSUS_FIELD = "from the census, or written by the persona_filler LLM where the census lacks it (see `provenance`)"
OTHER_PERSONA_NOTES = {
    "source_serialno": "the census record: ACS PUMS SERIALNO, or `<source>:<serial>` for a UK teaching file "
                       "(e.g. `ni-2021:123`)",
    "source_sporder": "person number within the ACS housing unit; 1 for a UK teaching file (one record per person)",
    "state": "US state, or the UK nation of residence",
    "age": "census age (UK teaching files: a seeded year within the census's age band)",
    "imputed_fields": "census fields imputed by hot-deck (ACS CA/TX narrow files; none for UK files)",
    "generated_fields": "attributes the census lacks, written by the persona_filler LLM",
    "country": "the persona's country", "census_source": "the census source (recipe `census.format`)",
    "census_extra": "census facts beyond the paper's attributes (e.g. approximate social grade), as persona lines",
    "provenance": "per attribute: census, census band + seeded year, llm or seeded",
    "religion": "from the census where it has religion (NI 2021, Scotland 2011), else the persona_filler LLM",
}
EXAMPLE_CELL = 160  # characters of an example value shown in a structure table
TWO_WAY_SHOWN = 8   # worst attribute pairs shown in the card (all are in manifest.json)
# The Hub's size_categories buckets, by number of examples.
SIZE_BUCKETS = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]


def render_card(manifest: dict, plot_path: str | None = None) -> str:
    """README.md text: YAML header (configs, dataset_info, ...) then prose. Same manifest, same text."""
    m = manifest
    splits = m["splits"]
    tvd = attribute_tvd(m["fidelity"])
    lengths = m.get("lengths", {})
    local = m.get("load_path") or m["name"]
    fields = {
        # sorted keys: the text must not depend on key order, which manifest.json (sorted) does not keep
        "header": yaml.safe_dump(card_header(m), sort_keys=True, allow_unicode=True, width=1000),
        "pretty_name": pretty_name(m),
        "demo_banner": demo_banner(m),
        "name": m["name"],
        "version_text": f"version `{m['version']}` " if m.get("version") else "",
        "description": f"{m['description'].strip()}\n\n" if m.get("description") else "",
        "fingerprint": m["fingerprint"],
        "seed": m["seed"],
        "loading": loading(m, local),
        "contents_table": _rows(
            [config, split, _num(info["rows"]), _num(info["bytes"]), _num(len(info["files"]))]
            for config in ordered_configs(splits) for split, info in _ordered_splits(splits[config])),
        "config_notes": "\n".join(
            f"- `{config}`{' (default)' if config == DEFAULT_CONFIG else ''}: {CONFIG_NOTES.get(config, 'see `dataset_info` in the metadata header.')}"
            for config in ordered_configs(splits)),
        "split_notes": "\n".join(f"- `{s}`: {SPLIT_NOTES[s]}." for s, _ in _ordered_splits(splits.get(DEFAULT_CONFIG, {}))
                                 if s in SPLIT_NOTES),
        "structure": structure(m),
        "models_table": _rows(
            [role, _model_link(spec.get("id", "")), f"`{spec.get('revision')}`", spec.get("dtype", ""),
             spec.get("license", "see model page")]
            for role, spec in sorted(m["models"].items())),
        "funnel": funnel(m),
        "versions_table": _rows([pkg, v or "not installed"] for pkg, v in sorted(m["versions"].items())),
        "sources_table": _rows(source_rows(m["sources"])),
        "plot": (f"![Population vs sample share per category]({plot_path})\n\n" if plot_path else ""),
        "fidelity_basis": _basis(m.get("census_fidelity", {}).get("basis", {})),
        "fidelity_table": _rows(
            [row["attribute"], row["category"], _share(row["population_share"]), _share(row["sample_share"]),
             _share(tvd[row["attribute"]])]
            for row in m["fidelity"]),
        "two_way": two_way(m.get("census_fidelity", {}).get("tvd_2way")),
        "diversity": diversity(m.get("diversity")),
        "lengths_text": length_text(lengths),
        "lengths_table": _rows([key, _num(value) if value is not None else "off"]
                               for key, value in _flatten(lengths) if not key.startswith("dpo_")),
        "license": m.get("license", "cc-by-4.0"),
        **census_text(m),
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(fields)


US_CENSUS_TEXT = {   # the card's census sentences for a US (ACS PUMS) build, as they always were
    "census_intro": "the US Census (ACS PUMS)",
    "census_step": "individual ACS PUMS records drawn with their person weights.",
    "census_limits": "- **United States only**: personas come from the American Community Survey; they do not describe\n"
                     "  people elsewhere.\n",
    "imputed_limits": "- **Imputed attributes for California and Texas**: the census extract has only a few columns for "
                      "these\n  two states, so their other attributes are imputed from similar records, not observed.\n",
    "census_licence": "- ACS PUMS microdata: US Census Bureau, public domain.\n",
    "provenance": "",
}


def census_text(m: dict) -> dict:
    """The census sentences of the card: the US ones, or those of the build's census source (its name,
    publisher, year, licence and attribution statement, e.g. the OGL v3 statement of a UK teaching file)
    with the per-attribute provenance table."""
    if not _other_census(m):
        return dict(US_CENSUS_TEXT)
    if len(m.get("census_sources") or []) > 1:
        return _mixed_text(m)
    src = m["sources"]["census"]
    name, year, publisher = src.get("name", "a census"), src.get("year", ""), src.get("publisher", "")
    return {
        "census_intro": f"the {name} ({publisher}, {year})",
        "census_step": (f"records of the {name} ({_cell(src.get('url', ''))}), an equal-weight sample (no person "
                        "weights), drawn systematically with implicit stratification by age band, sex, religion, "
                        "social grade and economic activity."),
        "census_limits": (f"- **{src.get('country')} only, one census**: personas come from the {name}; its "
                          "teaching file has a few coarse variables, so most attributes are written by an LLM "
                          "(see *Where each attribute comes from*), and ages are a seeded year within the census's "
                          "age band.\n"),
        "imputed_limits": "",
        "census_licence": (f"- {name}: {publisher}, {src.get('licence', '')}. {src.get('attribution', '')}\n"),
        "provenance": provenance_table(m.get("census_provenance")),
    }


def _other_census(m: dict) -> bool:
    """True for a build from a census other than the US ACS alone (a source names another country, or
    several sources are mixed)."""
    src = m.get("sources", {}).get("census", {})
    return (isinstance(src, dict) and src.get("country", "United States") != "United States") or len(
        m.get("census_sources") or []) > 1


def _mixed_text(m: dict) -> dict:
    """The census sentences of a build mixing several census sources."""
    srcs = m["census_sources"]
    named = "; ".join(f"{s.get('name')} ({s.get('publisher')}{', ' + str(s['year']) if s.get('year') else ''}: "
                      f"{_num(s.get('personas'))} personas)" for s in srcs)
    licences = "".join(f"- {s.get('name')}: {s.get('publisher')}, {s.get('licence')}. {s.get('attribution', '')}".rstrip()
                       + "\n" for s in srcs)
    return {
        "census_intro": f"{len(srcs)} censuses ({named})",
        "census_step": ("each census source drawn for its share of the personas (US ACS PUMS: with person weights; "
                        "UK teaching files: equal weights, systematic with implicit strata); the `personas` config "
                        "says each persona's `country` and `census_source`."),
        "census_limits": ("- **Several censuses, unlike each other**: each source has its own variables; attributes a "
                          "census lacks are written by an LLM (see *Where each attribute comes from*).\n"),
        "imputed_limits": "",
        "census_licence": licences,
        "provenance": provenance_table(m.get("census_provenance")) + fidelity_by_source(m.get("census_fidelity_by_source")),
    }


def fidelity_by_source(by_source: dict | None) -> str:
    """Marginal TVD per attribute and the worst two-way TVD, per census source of a mixed build."""
    if not by_source or len(by_source) < 2:
        return ""
    out = ["### Fidelity per census source", "", "| source | personas | attribute | TVD |", "|---|---:|---|---:|"]
    for key, r in sorted(by_source.items()):
        out += [f"| {key} | {_num(r.get('n_sample'))} | {a} | {_share(t)} |" for a, t in sorted(r.get("tvd", {}).items())]
        if r.get("tvd_2way"):
            worst = max(r["tvd_2way"], key=lambda p: p["tvd"])
            out.append(f"| {key} | | worst pair: {' × '.join(worst['attributes'])} | {_share(worst['tvd'])} |")
    return "\n".join(out) + "\n\n"


def provenance_table(prov: dict | None) -> str:
    """Per census source and attribute: how many personas got it from the census, an LLM or a seeded draw."""
    if not prov:
        return ""
    out = ["### Where each attribute comes from", "",
           "Per persona, `provenance` records for each attribute whether it came from the census, the "
           "persona_filler LLM or a seeded draw. Counts of personas:", ""]
    for source, attrs in sorted(prov.items()):
        origins = sorted({o for counts in attrs.values() for o in counts})
        out += [f"**{source}**", "", "| attribute | " + " | ".join(origins) + " |",
                "|---|" + "---:|" * len(origins)]
        out += [f"| {a} | " + " | ".join(_num(counts.get(o, 0)) for o in origins) + " |" for a, counts in attrs.items()]
        out.append("")
    return "\n".join(out) + "\n"


def loading(m: dict, local: str) -> str:
    """The load lines: this build from where it was built, the pinned Hub release, and DPO with TRL."""
    splits = m["splits"]
    repo_id = m.get("repo_id") or "<org>/persona"
    revision = m.get("version") or "v1.0.0"
    pref_splits = ", ".join(s for s, _ in _ordered_splits(splits.get(DEFAULT_CONFIG, {})))
    lines = ["```python", "from datasets import load_dataset", "",
             "# this build, from the folder it was built in (splits: " + pref_splits + ")",
             f'pairs = load_dataset("{local}", "{DEFAULT_CONFIG}")',
             "# a published release, pinned to its tag",
             f'pairs = load_dataset("{repo_id}", "{DEFAULT_CONFIG}", revision="{revision}")',
             "```"]
    lengths = m.get("lengths", {})
    reviser = m["models"].get("reviser", {}).get("id") or "<model>"
    if "dpo" in splits and lengths.get("dpo_max_length"):
        lines += ["", "DPO with [TRL](https://huggingface.co/docs/trl):", "", "```python",
                  "from datasets import load_dataset",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "from trl import DPOConfig, DPOTrainer", "",
                  f'model_id = "{reviser}"   # the tokenizer max_length was measured with',
                  "model = AutoModelForCausalLM.from_pretrained(model_id)",
                  "tokenizer = AutoTokenizer.from_pretrained(model_id)",
                  f'dpo = load_dataset("{local}", "dpo")',
                  f'args = DPOConfig(output_dir="dpo-persona", max_length={lengths["dpo_max_length"]})',
                  'trainer = DPOTrainer(model=model, args=args, train_dataset=dpo["train"], processing_class=tokenizer)',
                  "trainer.train()", "```", "",
                  f"`max_length={lengths['dpo_max_length']}` is the 99th percentile of prompt + longer answer over "
                  f"the pairs (longest: {_num(lengths.get('dpo_longest'))} tokens), so at most 1% of pairs are "
                  f"truncated. Counted with the {lengths.get('dpo_length_basis', 'unknown')}; another model's "
                  "tokenizer gives other counts."]
    lines += ["", "Each release is one commit with a tag; `manifest.json` lists every file with its size and "
              "SHA-256 (`SHA256SUMS` lists the same files plus `manifest.json`, for `sha256sum -c`)."]
    return "\n".join(lines)


def structure(m: dict) -> str:
    """Per config: each field with its type, meaning and the value in the config's first row."""
    out = []
    examples = m.get("examples", {})
    for config in ordered_configs(m["splits"]):
        features = m["features"].get(config, [])
        example = examples.get(config, {})
        notes = FIELD_NOTES.get(config, {})
        other = config == "personas" and _other_census(m)
        if other:
            notes = {**notes, **OTHER_PERSONA_NOTES}
        out += [f"### `{config}`", "", "| field | type | meaning | example (first row) |", "|---|---|---|---|"]
        for f in features:
            meaning = notes.get(f["name"], (OTHER_CENSUS_FIELD if other else CENSUS_FIELD) if config == "personas" else "")
            shown = _example(example.get(f["name"])) if example else ""
            out.append(_rows([[f"`{f['name']}`", _type(f), meaning, shown]]))
        out.append("")
    return "\n".join(out)


def funnel(m: dict) -> str:
    """The build read top to bottom: every stage's input, what it dropped and why, what it kept."""
    c, rejects = m.get("counts", {}), m.get("rejects", {})
    out = []
    if "personas_drawn" in c:
        by_rule = rejects.get("personas", {})
        rows = [["census records eligible", _num(m.get("census_fidelity", {}).get("population_records"))],
                ["drawn (PPS by person weight, replacements included)" if not _other_census(m) else
                 "drawn (by each census's own design, replacements included)", _num(c["personas_drawn"])],
                ["rejected (rules, enrichment or judge)", _minus(c["personas_rejected"])]]
        rows += [[f"&nbsp;&nbsp;&nbsp;&nbsp;breaking `{rule}`", _num(n)] for rule, n in sorted(by_rule.items())]
        rows += [["**personas**", f"**{_num(c['personas'])}**"]]
        out += ["**Personas**", "", "| step | count |", "|---|---:|", _rows(rows), ""]
        if sum(by_rule.values()) != c["personas_rejected"]:
            out += [f"A persona breaking several rules is listed under each: the rule rows sum to "
                    f"{_num(sum(by_rule.values()))} for {_num(c['personas_rejected'])} rejected personas.", ""]
    pr = c.get("prompts", {})
    if {"filter", "classify", "split"} <= set(pr):
        f, k, sp = pr["filter"], pr["classify"], pr["split"]
        rows = [["PRISM opening prompts", _num(f["input"])], ["no question mark", _minus(f["no_question_mark"])],
                ["too short (under 5 words)", _minus(f["too_short"])], ["too long", _minus(f["too_long"])],
                ["passed the rules", _num(f["passed_rules"])], ["exact duplicates", _minus(f["duplicates_exact"])],
                ["duplicates after normalising", _minus(f["duplicates_normalised"])],
                ["after dedup", _num(f["after_dedup"])],
                ["sent to the classifier" + (" (a seeded sample: `classify_limit`)" if k.get("classify_limit") else ""),
                 _num(k["classified"])],
                ["classifier answer unusable", _minus(k["classifier_rejects"])],
                ["not controversial", _minus(k["not_controversial"])],
                ["**controversial: kept**", f"**{_num(k['controversial'])}**"],
                ["&nbsp;&nbsp;&nbsp;&nbsp;train pool", _num(sp["train"])],
                ["&nbsp;&nbsp;&nbsp;&nbsp;held-out pool", _num(sp["heldout"])]]
        out += ["**Prompts**", "", "| step | count |", "|---|---:|", _rows(rows), ""]
    made = c.get("pairs", {})
    if "assignment" in c and isinstance(made, dict):
        pair_rejects = rejects.get("pairs", {})
        rows = [["assigned (persona × prompt)", _num(c["assignment"]["pairs"])]]
        rows += [[f"rejected at `{key.split(':', 1)[0]}`: {key.split(':', 1)[-1]}", _minus(n)]
                 for key, n in sorted(pair_rejects.items())]
        rows += [["**pairs made**", f"**{_num(sum(made.values()))}**"]]
        rows += [[f"&nbsp;&nbsp;&nbsp;&nbsp;{s}", _num(n)] for s, n in _ordered_splits(made)]
        out += ["**Pairs**", "", "| step | count |", "|---|---:|", _rows(rows), ""]
    req = c.get("requests", {})
    if req:
        # truncated: answers that stopped at max_tokens even after a larger budget (rejected), and those a
        # recipe with output.truncated = "keep" kept as they were
        rows = [[role, _num(r.get("requests")), _num(r.get("ok")), _num(sum(r.get("rejects", {}).values())),
                 _num(r.get("rejects", {}).get("truncated", 0)), _num(r.get("truncated_kept", 0)),
                 _num(r.get("retries", 0)), _num(r.get("retry_output_tokens", 0)), _num(r.get("prompt_tokens")),
                 _num(r.get("output_tokens"))]
                for role, r in sorted(req.items())]
        out += ["**Model requests**", "", "| role | requests | ok | rejected | of which truncated | truncated, kept "
                "| retries | output tokens of retried attempts | prompt tokens | output tokens |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", _rows(rows), "",
                "An answer that stopped at `max_tokens` is asked again with a larger budget; one still cut off is "
                "rejected as truncated (never used as a chosen or rejected text) unless the recipe says "
                "`output.truncated = \"keep\"`. Retries: extra attempts after an unusable or cut-off answer; the "
                "tokens those attempts decoded before being thrown away are counted apart from the output tokens "
                "of the answers kept.", ""]
    return "\n".join(out) or "(no counts recorded)\n"


def source_rows(sources: dict) -> list[list[str]]:
    """[source, item, rows, sha256] rows. A list of files (the census's 51 state files) is ONE row: how
    many, their rows, and one digest over their listing (names, rows) in manifest.json."""
    rows = []
    for source, info in sorted(sources.items()):
        if not isinstance(info, dict):
            rows.append([source, _cell(info), "", ""])
            continue
        files = info.get("files") if isinstance(info.get("files"), list) else []
        shas = {k.removesuffix("sha256").rstrip("_"): v for k, v in info.items() if k.endswith("sha256")}
        for key, value in sorted(info.items()):
            if key == "files" or key == "rows" or key.endswith("sha256"):
                continue
            sha = shas.pop(key, None) or (shas.pop("", None) if key == "file" else None)
            count = _num(info["rows"]) if key == "file" and "rows" in info else ""
            rows.append([source, f"{key}: `{_cell(value)}`", count, f"`{sha}`" if sha else ""])
        if files:  # files_sha256: the sha256 of their `sha256sum` listing (see builder/pipeline.py)
            digest = shas.pop("files", None)
            narrow = sum(bool(f.get("narrow")) for f in files)
            rows.append([source, f"{len(files)} Parquet files" + (f" ({narrow} narrow: CA, TX)" if narrow else ""),
                         _num(sum(f.get("rows", 0) for f in files)),
                         f"`{digest}` (of their sha256sum listing)" if digest else "listed in manifest.json"])
        rows += [[source, f"{name or 'file'}", "", f"`{sha}`"] for name, sha in sorted(shas.items())]
    return rows


def two_way(pairs: list[dict] | None) -> str:
    if not pairs:
        return ""
    worst = sorted(pairs, key=lambda p: (-p["tvd"], p["attributes"]))[:TWO_WAY_SHOWN]
    return ("A sample can match every marginal and still combine attributes wrongly (e.g. too many young "
            "people with high incomes). Weighted TVD of the joint distribution of each pair of attributes, "
            f"measured like the marginals above; the worst {len(worst)} of {len(pairs)} pairs (all are in "
            "`manifest.json`):\n\n| attributes | joint TVD |\n|---|---:|\n"
            + _rows([f"{p['attributes'][0]} × {p['attributes'][1]}", _share(p["tvd"])] for p in worst) + "\n")


def diversity(d: dict | None) -> str:
    if not d:
        return ""
    c = d.get("chosen_per_prompt", {})
    out = ["## Diversity", ""]
    if c.get("prompts"):
        out += [f"Chosen answers to the same prompt for different personas: over the {_num(c['prompts'])} prompts "
                f"answered for two or more personas, distinct chosen texts / pairs is "
                f"{_share(c['mean_distinct_share'])} on average and {_share(c['min_distinct_share'])} at the "
                "lowest (1 = every persona got its own answer).", ""]
    rep = d.get("repeated_enriched", {})
    if rep:
        out += [f"Enriched persona fields repeated verbatim by another persona (share of the "
                f"{_num(d.get('personas'))} personas; `ideology`, `political_views` and `religion` are picked "
                "from closed lists, so repeats are expected there):", "",
                "| field | share repeated |", "|---|---:|",
                _rows([f"`{k}`", "n/a" if v is None else _share(v)] for k, v in sorted(rep.items())), ""]
    return "\n".join(out) + "\n"


def length_text(lengths: dict) -> str:
    """The length-confound sentence follows this build's own numbers."""
    shorter, ratio = lengths.get("share_chosen_shorter"), lengths.get("median_chosen_over_rejected")
    if shorter is None or ratio is None:
        return ("A revised answer can differ in length from the original, so \"chosen\" may be predictable from "
                "length alone.")
    if shorter > 0.5:
        side, share = "shorter", shorter
    else:
        side, share = "longer", 1 - shorter
    return (f"In this build the chosen answer is {side} than the rejected one in {share:.0%} of pairs (median "
            f"ratio chosen / rejected {ratio:.2f}), so \"chosen\" can be predicted from length alone: a model "
            f"trained on these pairs may learn to prefer {side} answers rather than answers that fit the "
            f"persona. Report length-controlled results. Length control while revising: "
            f"{'off' if lengths.get('length_control') is None else lengths['length_control']}.")


def card_header(m: dict) -> dict:
    """The YAML metadata the Hub reads: licence, tags, configs (data_files) and dataset_info per config."""
    splits = m["splits"]
    configs, infos = [], []
    for config in ordered_configs(splits):
        ordered = _ordered_splits(splits[config])
        entry = {"config_name": config}
        if config == DEFAULT_CONFIG:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"{config}/{s}-*.parquet"} for s, _ in ordered]
        configs.append(entry)
        infos.append({
            "config_name": config,
            "features": m["features"][config],  # already in the Hub's YAML list form
            "splits": [{"name": s, "num_bytes": info["num_bytes"], "num_examples": info["rows"]}
                       for s, info in ordered],
            "download_size": sum(info["bytes"] for _, info in ordered),
            "dataset_size": sum(info["num_bytes"] for _, info in ordered),
        })
    largest = max((sum(i["rows"] for i in s.values()) for s in splits.values()), default=0)
    tags = ["synthetic", "personas", "preference", "dpo", "pluralistic-alignment", "census"]
    if m.get("demo"):
        tags.append("demo")
    return {
        "pretty_name": pretty_name(m),
        "license": m.get("license", "cc-by-4.0"),
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [size_category(largest)],
        "configs": configs,
        "dataset_info": infos,
    }


def pretty_name(m: dict) -> str:
    return m.get("pretty_name") or "PERSONA (open rebuild)" + (" - demo build" if m.get("demo") else "")


def demo_banner(m: dict) -> str:
    if not m.get("demo"):
        return ""
    models = ", ".join(sorted({spec["id"] for spec in m["models"].values() if spec.get("id")}))
    return (f"> **Demonstration build.** Generated with small demonstration model(s) ({models}) to show the\n"
            "> pipeline end to end. The text is not research-grade data: do not train or evaluate on it.\n\n")


def size_category(n: int) -> str:
    for limit, label in SIZE_BUCKETS:
        if n < limit:
            return label
    return "n>1B"


def ordered_configs(splits: dict) -> list[str]:
    """The default config first, then the rest by name (the Hub shows them in this order)."""
    return sorted(splits, key=lambda c: (c != DEFAULT_CONFIG, c))


def attribute_tvd(fidelity: list[dict]) -> dict[str, float]:
    """Total variation distance per attribute: half the sum of |population share - sample share|."""
    tvd: dict[str, float] = {}
    for row in fidelity:
        diff = abs(row["population_share"] - row["sample_share"])
        tvd[row["attribute"]] = tvd.get(row["attribute"], 0.0) + diff / 2
    return tvd


def plot_fidelity(fidelity_rows: list[dict], path) -> Path:
    """Scatter of population vs sample share per category, one colour per attribute, PNG.

    Deterministic bytes: a fresh Agg figure under matplotlib's default style, and no PNG metadata
    (matplotlib would otherwise write its version as `Software`)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tvd = attribute_tvd(fidelity_rows)
    attributes = list(dict.fromkeys(row["attribute"] for row in fidelity_rows))  # first-seen order
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7, 6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        top = max([r["population_share"] for r in fidelity_rows] + [r["sample_share"] for r in fidelity_rows])
        ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="sample = population")
        colors = matplotlib.colormaps["tab20"]  # 20 distinct colours; the default cycle repeats after 10
        for i, attribute in enumerate(attributes):
            rows = [r for r in fidelity_rows if r["attribute"] == attribute]
            ax.scatter([r["population_share"] for r in rows], [r["sample_share"] for r in rows], s=18,
                       color=colors(i % 20), label=f"{attribute} (TVD {_share(tvd[attribute])})")
        ax.set_xlabel("population share (census, weighted)")
        ax.set_ylabel("sample share (personas)")
        ax.set_title("Census fidelity of the persona sample")
        ax.legend(fontsize="small", loc="upper left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


def _basis(basis: dict) -> str:
    if not basis:
        return ""
    lines = [f"- `{attribute}`: {how}" for attribute, how in sorted(basis.items())]
    return "Population shares come from:\n\n" + "\n".join(lines) + "\n"


def _ordered_splits(config_splits: dict) -> list[tuple[str, dict]]:
    return sorted(config_splits.items(), key=lambda kv: (kv[0] != "train", kv[0]))  # train, then by name


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> sorted [("a.b", value)] for key/value tables."""
    out = []
    for key, value in sorted(d.items()):
        name = f"{prefix}{key}"
        out += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return out


def _rows(rows) -> str:
    lines = ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) if lines else "| (none) |"


def _num(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _cell(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:,.4f}"


def _minus(x) -> str:
    return f"−{_num(x)}" if x else _num(x)  # "−0" reads as a typo


def _type(feature: dict) -> str:
    if "dtype" in feature:
        return feature["dtype"]
    inner = feature.get("list")
    if isinstance(inner, list):
        return "list of {" + ", ".join(f"{f['name']}: {_type(f)}" for f in inner) + "}"
    return f"list of {inner}" if isinstance(inner, str) else "struct"


def _example(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, list) and v and all(isinstance(x, dict) and "role" in x for x in v):
        v = " / ".join(f"{x['role']}: {x.get('content', '')}" for x in v)
    elif isinstance(v, list):
        v = ", ".join(map(str, v)) or "(empty)"
    text = " ".join(str(v).split())
    return text if len(text) <= EXAMPLE_CELL else text[:EXAMPLE_CELL].rstrip() + " …"


def _share(x: float) -> str:
    return f"{x:.4f}"


def _cell(x) -> str:
    return "" if x is None else str(x).replace("\n", " ")


def _model_link(model_id: str) -> str:
    # Hub ids ("org/name") link to their page; anything else is shown as is.
    if model_id.count("/") == 1 and not model_id.startswith(("/", ".")):
        return f"[{model_id}](https://huggingface.co/{model_id})"
    return model_id
