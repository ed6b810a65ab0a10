"""One recipe -> one dataset folder: personas -> prompts -> pairs -> shards -> card -> verify.

Every model call goes through the StoreRunner, so a rerun after a crash answers what is stored and
generates only the rest; the output folder is assembled in a staging folder and swapped in whole.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import Features

from generation import census, pairs, personas, prompts, sources, stats
from generation.errors import PersonaError
from generation.log import log, route_library_logs, show_library_output
from generation.models import cache_dir, check_model
from generation.names import CONFIGS, PREFERENCES, SPLITS
from generation.personas.attributes import LLM_ATTRIBUTES
from generation.results import StageResult

from . import folders
from . import manifest as mf
from .backends import backend_for_recipe, backend_settings, model_spec, resolve_revisions, with_executor
from .recipe import ROLES, CensusConfig, Recipe, load_recipe
from .runner import REHEARSAL, RunnerConfig, StoreRunner, reason_category
from .shards import write_config
from .store import RequestStore


class BuildError(PersonaError, RuntimeError):
    pass


def _fmt(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none recorded"


# ----------------------------------------------------------------------------------------- census

def _census_source(c: CensusConfig, cache: Path) -> tuple[Path, Path | None, dict]:
    if c.source == "census.gov":
        persons = census.download(census.OFFICIAL_URLS["persons"], cache, c.sha256)
        housing = census.download(census.OFFICIAL_URLS["housing"], cache)
        dictionary = census.download(c.dictionary or census.OFFICIAL_URLS["dictionary"], cache)
        prov = {"persons": persons.url, "persons_sha256": persons.sha256, "housing_sha256": housing.sha256,
                "dictionary_sha256": dictionary.sha256}
        return persons.path, dictionary.path, prov
    source = Path(c.source)
    dictionary = Path(c.dictionary) if c.dictionary else next(iter(sorted(
        (source if source.is_dir() else source.parent).glob("PUMS_Data_Dictionary_*.csv"))), None)
    if dictionary is None:
        raise census.CensusError(f"{source}: no PUMS_Data_Dictionary_*.csv beside it; set census.dictionary")
    if c.sha256 and mf.sha256_file(source) != c.sha256:  # the recipe allows a pin only on a file source
        raise census.CensusError(f"{source}: sha256 {mf.sha256_file(source)} does not match census.sha256 {c.sha256}")
    return source, dictionary, {"source": source.name, "dictionary": dictionary.name,
                                "dictionary_sha256": mf.sha256_file(dictionary)}


def make_personas(recipe: Recipe, run, cache: Path) -> tuple[StageResult, dict]:
    """The personas stage through each census source plug-in of the recipe (generation.sources), plus the
    census fidelity of the personas actually kept. A mixed recipe ([[census.more]]) runs the stage once
    per source, for its share of the personas, and joins them in recipe order."""
    parts = recipe.census.sources()
    if len(parts) == 1:
        return _source_personas(recipe, recipe.census, recipe.census.personas, run, cache, mixed=False)
    return _join([_source_personas(recipe, c, n, run, cache, mixed=True) for c, n in parts])


def _source_personas(recipe: Recipe, c: CensusConfig, n: int, run, cache: Path, mixed: bool) -> tuple[StageResult, dict]:
    if c.format == "acs-pums":
        path, dictionary, prov = _census_source(c, cache)
        log.info(f"census: reading {path}")
        src = sources.open_source(c.format, path, dictionary=dictionary, states=c.states or None,
                                  min_age=c.min_age, method=c.method)
        prov["files"] = src.frame.sources
        prov.update(_files_digest(c, prov))
    else:
        log.info(f"census: reading {c.source}")
        src = sources.open_source(c.format, c.source, min_age=c.min_age)
        if c.sha256 and src.info.sha256 != c.sha256:
            raise census.CensusError(f"{c.source}: sha256 {src.info.sha256} does not match census.sha256 {c.sha256}")
        prov = {**src.info.as_dict(), "source": Path(c.source).name}
    people = src.sample(n, recipe.seed)
    drawn, labelled = [people], [src.label(people)]

    def draw_more(k, round, exclude):
        more = src.draw_more(k, recipe.seed, round, exclude)
        drawn.append(more)
        labelled.append(src.label(more))
        return labelled[-1]

    log.info(f"personas: {n} drawn from {len(src):,} records; enriching and checking")
    result = personas.build_personas(labelled[0], draw_more, run, n, recipe.seed, max_rounds=c.max_rounds,
                                     source=prov)
    # fidelity of the personas actually published (after consistency replacements)
    kept = set(zip(result.table.source_serialno, result.table.source_sporder.astype(int)))
    codes = pd.concat(drawn, ignore_index=True)
    codes = codes[[key in kept for key in src.keys(codes)]]
    fit = src.fidelity(codes)
    # US-only builds keep their columns (and bytes); the others say where each value came from
    if mixed or src.country != sources.US:
        result.table, fit["extra"] = sources.with_origins(src, result.table, pd.concat(labelled, ignore_index=True))
        fit["extra"]["census_sources"] = [{**src.info.as_dict(), "personas": int(len(result.table))}]
        fit["extra"]["census_fidelity_by_source"] = {src.info.key: fit["report"]}
    return result, fit


def _join(parts: list[tuple[StageResult, dict]]) -> tuple[StageResult, dict]:
    """One personas stage from several sources: tables and rejects in recipe order, counts added up; the
    first source's fidelity stays the headline, every source's is in census_fidelity_by_source."""
    results, fits = [r for r, _ in parts], [f for _, f in parts]
    counts: dict = {}
    for r in results:
        for k, v in r.counts.items():
            counts[k] = ({**{key: counts.get(k, {}).get(key, 0) + n for key, n in v.items()},
                          **{key: n for key, n in counts.get(k, {}).items() if key not in v}}
                         if isinstance(v, dict) else max(counts.get(k, 0), v) if k == "rounds" else counts.get(k, 0) + v)
    counts["rejected"] = dict(sorted(counts["rejected"].items()))
    joined = StageResult(pd.concat([r.table for r in results], ignore_index=True), counts,
                         [x for r in results for x in r.rejects], results[0].source)
    extra = {"census_sources": [s for f in fits for s in f["extra"]["census_sources"]],
             "census_provenance": {k: v for f in fits for k, v in f["extra"]["census_provenance"].items()},
             "census_fidelity_by_source": {k: v for f in fits for k, v in f["extra"]["census_fidelity_by_source"].items()}}
    return joined, {**fits[0], "extra": extra}


# ------------------------------------------------------------------------------------------ tables

def arrow_table(df: pd.DataFrame) -> pa.Table:
    """pandas -> Arrow without pandas metadata. pandas 3 string columns arrive as large_string, an
    empty table's text columns as null and a categorical one (a text kept once in memory, see
    pairs.build_pairs) as a dictionary: all are stored as plain `string`, so a split's features do
    not depend on how many rows it has or how they were held. Every list column is a list of texts
    (imputed_fields, generated_fields, reasons): one whose lists are all empty (a UK build imputes
    nothing) arrives as list<null> and is stored as list<string>."""
    t = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    def text(tp) -> bool:
        if pa.types.is_dictionary(tp):
            return pa.types.is_string(tp.value_type) or pa.types.is_large_string(tp.value_type)
        return pa.types.is_large_string(tp) or pa.types.is_null(tp)
    def stored(tp):
        if pa.types.is_list(tp) and (text(tp.value_type) or pa.types.is_string(tp.value_type)):
            return pa.list_(pa.string())
        return pa.string() if text(tp) else tp
    schema = pa.schema([pa.field(f.name, stored(f.type)) for f in t.schema])
    return t.cast(schema).replace_schema_metadata(None)


# Rows of a large config turned into Arrow at a time. A paper-size build holds its pairs once (the stage's
# table); each split, and its DPO rendering, is made and written piece by piece instead of copied whole
# (which took the peak from ~3 GB to ~9 GB). The shards' bytes do not depend on it: write_config cuts row
# groups by bytes, whatever pieces the rows arrive in.
PIECE_ROWS = 20_000


def _pieces(df: pd.DataFrame, rows=None, make=None) -> Callable[[], Iterator[pd.DataFrame]]:
    """The rows `rows` (positions; default all) of `df`, PIECE_ROWS at a time, each passed through `make`."""
    def pieces():
        at = np.arange(len(df)) if rows is None else rows
        for i in range(0, len(at), PIECE_ROWS):
            piece = df.iloc[at[i:i + PIECE_ROWS]].reset_index(drop=True)
            yield make(piece) if make else piece
    return pieces


def write_tables(out: Path, tables: dict[tuple[str, str], Callable[[], Iterator[pd.DataFrame]]],
                 recipe: Recipe) -> list[dict]:
    shards = []
    for (config, split), pieces in tables.items():
        arrow = (arrow_table(df) for df in pieces() if not df.empty)
        first = next(arrow, None)
        if first is None:  # `datasets` cannot load a split without rows; the manifest still counts it as 0
            continue
        shards += write_config(out, config, split, itertools.chain([first], arrow), Features.from_arrow_schema(first.schema),
                               recipe.output.max_shard_bytes, recipe.output.row_group_bytes)
    return shards


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ------------------------------------------------------------------------------------------- build

def build(recipe_path: str, out: str | None = None, work: str | None = None, backend_for=None,
          executor: str | None = None, address: str | None = None, replicas: int | None = None,
          verbose: bool = False) -> dict:
    """VERBOSE shows vLLM's (and torch's, ...) own output on stderr; otherwise it goes to
    <work>/<recipe name>/vllm.log, which the final summary names."""
    recipe = with_executor(load_recipe(recipe_path), executor, address, replicas)
    out_dir = folders.output_path(out if out is not None else recipe.output.dir,
                                  "--out" if out is not None else "output.dir")
    work_root = work if work is not None else recipe.output.work_dir
    work_dir = folders.work_folder(work_root, recipe.name)
    # checked before the lock file or the work folder is made: a refused --out leaves no trace
    # (checked again under the lock, which also finishes what a killed build left)
    folders.check_apart(out_dir, Path(work_root).expanduser())
    folders.refuse_foreign(out_dir)
    with folders.exclusive(folders.output_lock(out_dir), f"output folder {out_dir}"):
        folders.check_output(out_dir)
        with folders.exclusive(work_dir / "build.lock", f"work folder {work_dir}"):
            route_library_logs(None if verbose else work_dir / VLLM_LOG)
            return _build(recipe, out_dir, work_dir, backend_for)


VLLM_LOG = "vllm.log"  # in the work folder, appended by every build of the recipe


def _shown(path: Path) -> str:
    """PATH relative to the current directory when it lies inside it (what a user would type), else absolute."""
    path = path.absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class Stages(NamedTuple):
    """What the stages of one build made: their results by name (personas, prompts, pairs), the
    prompt assignment and the census fidelity of the personas kept."""
    results: dict[str, StageResult]
    assignment: StageResult
    census_fit: dict


def _build(recipe: Recipe, out_dir: Path, work_dir: Path, backend_for) -> dict:
    started = time.monotonic()
    log.info(f"recipe {recipe.path} (fingerprint {recipe.fingerprint[:12]}), output {out_dir}, work {work_dir}")
    revisions, prompt_pool = _check_inputs(recipe)
    store = RequestStore(work_dir / "requests.sqlite")
    run = StoreRunner(RunnerConfig.from_recipe(recipe), store, backend_for or backend_for_recipe(recipe), revisions)
    stages = _run_stages(recipe, run, revisions, prompt_pool, store.path)
    rejects = _rejects_table(stages.results)
    tables = _tables(stages.results, rejects)

    staging = folders.new_staging(out_dir)
    log.info(f"writing shards to {staging}")
    shards = write_tables(staging, tables, recipe)
    fields = _manifest_fields(recipe, revisions, stages, rejects, tables, run, out_dir)
    if store.flag(REHEARSAL):  # marked for publish and the card: placeholder texts, not a dataset
        fields["rehearsal"] = "engine double (bench/double.py): placeholder answers, not a dataset"
    manifest = mf.finalize(staging, shards, **_jsonable(fields))
    problems = mf.verify_folder(staging)
    if problems:  # a bug of ours or a disk that lies; left for inspection until the next build
        raise BuildError(f"the fresh build in {staging} does not verify: " + "; ".join(problems))
    folders.swap_in(staging, out_dir)

    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    prefs, people = stages.results["pairs"].table, stages.results["personas"].table
    log.info(f"done in {minutes}m{seconds:02d}s: {len(prefs):,} pairs, {len(rejects):,} rejects ({len(people)} personas, "
             f"{len(stages.results['prompts'].table)} prompts) in {_shown(out_dir)}/ "
             f"({sum(f['bytes'] for f in manifest['files']):,} bytes, verified against manifest.json)")
    if not show_library_output():
        log.info(f"vLLM's log: {_shown(work_dir / VLLM_LOG)}")
    log.info(f'load it with: load_dataset("{_shown(out_dir)}", "{PREFERENCES}")')
    return manifest


def _check_inputs(recipe: Recipe) -> tuple[dict[str, str | None], tuple]:
    """Every input a stage needs, checked before the first model request (a mistyped model id or a bad
    prompts file found later would cost the census and persona stages first): the models' resolved
    revisions and the prompt pool."""
    for name, m in recipe.models.items():
        if not m.server:  # a server is asked about its model by resolve_revisions, next
            check_model(name, m.id, m.revision, m.path, m.prepare)
    revisions = resolve_revisions(recipe)
    log.info(f"prompts: {recipe.prompts.source}")
    return revisions, prompts.read_pool(recipe.prompts.source, recipe.prompts.text_field, recipe.prompts.sha256)


def _run_stages(recipe: Recipe, run, revisions: dict[str, str | None], prompt_pool, store_path: Path) -> Stages:
    """personas -> prompts -> assignment -> pairs. A stage that keeps nothing stops the build here, naming
    its rejects and where the model's answers are."""
    persona_stage, census_fit = make_personas(recipe, run, cache_dir() / "census")
    # the census frame is gone; Arrow's allocator keeps its freed pages for reuse unless asked (measured:
    # ~0.2 GB of the 3.4 M-record ACS read), and the pairs stage that follows is the build's peak
    pa.default_memory_pool().release_unused()
    people = persona_stage.table
    if people.empty:
        raise BuildError(f"no persona passed enrichment and the consistency checks "
                         f"(rejects: {_fmt(persona_stage.counts['rejected'])}); see the model's answers in {store_path}")
    if len(people) < recipe.census.personas:
        log.info(f"personas: only {len(people)} of {recipe.census.personas} consistent personas after "
                 f"{recipe.census.max_rounds} replacement rounds")

    prompt_stage = prompts.select_prompts(
        recipe.prompts.source, run, recipe.seed, recipe.prompts.text_field, recipe.prompts.sha256,
        recipe.prompts.classify_limit, recipe.prompts.heldout_fraction, pool=prompt_pool)
    pool = prompt_stage.table.pool
    p = recipe.pairs
    assignment = prompts.assign(
        people.persona_id.tolist(), prompt_stage.table.prompt_id[pool == "train"].tolist(),
        prompt_stage.table.prompt_id[pool == "heldout"].tolist(), recipe.seed,
        p.train_per_persona, p.n_train, p.n_unseen, cap=p.cap_to_pool)
    log.info(f"pairs: {len(assignment.table):,} pairs for {len(people)} personas")
    model_name = {role: f"{recipe.model_for(role).id}@{revisions[recipe.roles[role].model] or 'unpinned'}"
                  for role in ROLES}
    pair_stage = pairs.build_pairs(people, prompt_stage.table, assignment.table, run, p.length_control,
                                   recipe.output.max_attempts, structured=p.structured,
                                   limits=pairs.RevisionLimits(recipe.roles["reviser"].max_tokens,
                                                               recipe.model_for("reviser").max_model_len),
                                   models=model_name)
    if pair_stage.table.empty:
        raise BuildError(f"no preference pair survived generation (rejects: "
                         f"{_fmt(pair_stage.counts['rejects_by_reason'])}); "
                         f"see the model's answers in {store_path}")
    return Stages({"personas": persona_stage, "prompts": prompt_stage, "pairs": pair_stage}, assignment, census_fit)


def _tables(results: dict[str, StageResult], rejects: pd.DataFrame) -> dict[tuple[str, str], Callable[[], Iterator[pd.DataFrame]]]:
    """(config, split) -> its rows, piece by piece, for every config of names.CONFIGS in its order."""
    prefs = results["pairs"].table
    in_split = {s: np.flatnonzero(prefs.split.to_numpy() == s) for s in SPLITS}
    per_split = {PREFERENCES: None, "dpo": pairs.to_dpo}  # the pairs, each split as is or rendered
    # the prompts table's `pool` (train / heldout) is not a split of that config: it keeps its name
    whole = {"personas": results["personas"].table, "prompts": results["prompts"].table, "rejects": rejects}
    tables = {}
    for config in CONFIGS:  # one without a table is a KeyError
        if config in per_split:
            tables.update({(config, s): _pieces(prefs, in_split[s], per_split[config]) for s in SPLITS})
        else:
            tables[(config, "train")] = _pieces(whole[config])
    return tables


def _manifest_fields(recipe: Recipe, revisions: dict[str, str | None], stages: Stages, rejects: pd.DataFrame,
                     tables: dict, run, out_dir: Path) -> dict:
    """What manifest.json records beside the files, and the card shows."""
    persona_stage, prompt_stage = stages.results["personas"], stages.results["prompts"]
    prefs, people = stages.results["pairs"].table, persona_stage.table
    engines = {name: backend_settings(m) for name, m in recipe.models.items()}  # once per model, not per role
    return dict(
        name=recipe.name, recipe=recipe.text, seed=recipe.seed, demo=recipe.demo,
        models={role: {"id": recipe.model_for(role).id, "revision": revisions[recipe.roles[role].model],
                       "dtype": recipe.model_for(role).dtype, "license": recipe.model_for(role).license,
                       "why": recipe.model_for(role).why, "sampling": recipe.roles[role].sampling(),
                       **engines[recipe.roles[role].model]}
                for role in ROLES},
        sources={"census": persona_stage.source, "prompts": prompt_stage.source},
        counts=_counts(stages.results, stages.assignment, run),
        rejects=_reject_counts(persona_stage, rejects),
        fidelity=stages.census_fit["report"]["rows"],
        lengths={**pairs.length_report(prefs, recipe.pairs.length_control), **_dpo_lengths(prefs, recipe)},
        census_fidelity={k: v for k, v in stages.census_fit["report"].items() if k != "rows"},
        state_shares=stages.census_fit["state_shares"],
        **stages.census_fit.get("extra", {}),
        description=recipe.description,
        load_path=_load_path(out_dir),
        diversity=_diversity(prefs, people),
        examples=_examples(tables),
    )


def _rejects_table(stages: dict[str, StageResult]) -> pd.DataFrame:
    """One row per dropped persona, prompt or pair, as its stage recorded it (see StageResult.rejects):
    `reasons` a list (a persona can break several rules), `raw` the model's text or None."""
    rows = [{"stage": name, "id": str(r["id"]), "step": r["step"], "reasons": r["reasons"], "raw": r["raw"]}
            for name, stage in stages.items() for r in stage.rejects]
    cols = ["stage", "id", "step", "reasons", "raw"]
    return pd.DataFrame(rows, columns=cols).sort_values(cols[:3], kind="stable").reset_index(drop=True)


def _reject_counts(persona_stage: StageResult, rejects: pd.DataFrame) -> dict:
    out = {"personas": persona_stage.counts["rejected"]}  # a persona breaking several rules counts under each
    for stage in ("prompts", "pairs"):
        part = rejects[rejects.stage == stage]
        keys = [f"{step}:{reason_category(reasons[0])}" for step, reasons in zip(part.step, part.reasons)]
        out[stage] = dict(sorted(pd.Series(keys, dtype=object).value_counts().astype(int).items()))
    return out


# -------------------------------------------------------------------------- what the card shows

def _load_path(out_dir: Path) -> str:
    """What to pass to load_dataset from where the build ran: the --out folder as given when relative,
    only its name when absolute (the manifest never records a path of the build machine)."""
    return out_dir.name if out_dir.is_absolute() else out_dir.as_posix()


def _files_digest(c: CensusConfig, census_source: dict) -> dict:
    """One sha256 over the census files read from a local folder: of their `sha256sum` listing
    ("<sha256>  <name>" lines, sorted by name), so it can be checked with standard tools."""
    folder = Path(c.source)
    files = census_source.get("files") or []
    if not folder.is_dir() or not files:
        return {}
    listing = "".join(f"{mf.sha256_file(folder / f['file'])}  {f['file']}\n" for f in sorted(files, key=lambda f: f["file"]))
    return {"files_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _dpo_lengths(prefs: pd.DataFrame, recipe: Recipe) -> dict:
    """p99 of prompt + longer answer of the DPO rows, in the reviser's tokens (words x 1.3 when its tokenizer
    is not on disk)."""
    m = recipe.model_for("reviser")
    try:
        from transformers import AutoTokenizer
        spec, _ = model_spec(m)
        tokenizer = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load means the approximation, which the card names
        log.info(f"dpo lengths: no tokenizer for {m.id} ({type(e).__name__}); approximating tokens from words")
        tokenizer = None
    # a p99 needs no census of 317,200 rendered conversations: a seeded sample of a few thousand will do
    # (sampled by position, then rendered: the same rows as sampling the rendered DPO table)
    rows = prefs if len(prefs) <= DPO_LENGTH_SAMPLE else prefs.sample(n=DPO_LENGTH_SAMPLE, random_state=recipe.seed % 2**32)
    out = stats.dpo_lengths(pairs.to_dpo(rows)[["prompt", "chosen", "rejected"]].to_dict("records"), tokenizer, m.id)
    if len(rows) < len(prefs):
        out["dpo_length_basis"] += f"; a seeded sample of {len(rows):,} of the {len(prefs):,} pairs"
    return out


DPO_LENGTH_SAMPLE = 5000


def _diversity(prefs: pd.DataFrame, people: pd.DataFrame) -> dict:
    enriched = [f for f in LLM_ATTRIBUTES if f in people.columns]
    return {"chosen_per_prompt": stats.chosen_diversity(prefs.prompt_id.tolist(), prefs.chosen.tolist()),
            "personas": int(len(people)),
            "repeated_enriched": {f: stats.repeated_share(people[f].tolist()) for f in enriched}}


EXAMPLE_CHARS = 400  # texts in the card's example rows are cut here


def _examples(tables: dict[tuple[str, str], Callable[[], Iterator[pd.DataFrame]]]) -> dict:
    """The first row of each config (its first non-empty split), long texts cut, for the card."""
    def cut(v):
        if isinstance(v, float) and v != v:  # pandas shows a missing string (a reject's raw None) as NaN
            return None
        if isinstance(v, str):
            return v if len(v) <= EXAMPLE_CHARS else v[:EXAMPLE_CHARS].rstrip() + " …"
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if hasattr(v, "tolist") and not isinstance(v, (int, float)):
            v = v.tolist()
        return [cut(x) for x in v] if isinstance(v, list) else v
    out = {}
    for (config, _), pieces in tables.items():
        if config not in out:
            first = next((df for df in pieces() if not df.empty), None)  # one piece of a split, not the split
            if first is not None:
                out[config] = {k: cut(v) for k, v in first.iloc[0].to_dict().items()}
    return out


def _counts(stages: dict[str, StageResult], assignment: StageResult, run) -> dict:
    persona_counts, prompts_counts, prefs = stages["personas"].counts, stages["prompts"].counts, stages["pairs"].table
    return {
        "personas": int(len(stages["personas"].table)),
        "personas_drawn": persona_counts["drawn"],
        "personas_rejected": persona_counts["rejected_personas"],
        "prompts": prompts_counts,
        "assignment": assignment.counts,
        "pairs": {s: int((prefs.split == s).sum()) for s in SPLITS},
        "requests": run.summary(),
    }
