"""`persona eval`'s input: the `preferences` config of a local build folder (verified against its
manifest) or of a Hub repo at a revision (resolved to its commit; every shard checked against the
manifest stored there), as one table of pairs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from generation.errors import PersonaError
from generation.ids import sha256_file
from generation.names import PREFERENCES as CONFIG

from . import manifest as mf

PAIR_COLUMNS = ["pair_id", "persona_id", "prompt_id", "split", "persona", "instruction", "chosen", "rejected"]
SAFE_LABEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # one folder name: no '/', '\\', '..', '.'


class EvalError(PersonaError, ValueError):
    """A one-line, user-facing reason; the CLI prints it instead of a traceback."""


@dataclass
class Source:
    label: str            # a path-safe name for eval/<model>/<label>/
    info: dict            # recorded in the report
    manifest: dict
    folder: Path          # where the preferences shards are on disk


def open_local(path: str) -> Source:
    folder = Path(path)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such dataset folder (build one with `persona build`)")
    if not (folder / mf.MANIFEST).is_file():
        raise EvalError(f"{folder}: not a PERSONA build (no {mf.MANIFEST})")
    problems = mf.verify_folder(folder)
    if problems:
        raise EvalError(f"{folder}: does not match its manifest ({len(problems)} problem(s), first: {problems[0]}); "
                        f"run `persona verify {folder}`")
    manifest = mf.load_manifest(folder / mf.MANIFEST)
    content = sha256_file(folder / mf.SUMS)
    return Source(f"local-{content[:12]}", {"path": str(folder), "sha256sums": content,
                                            "recipe_fingerprint": manifest.get("fingerprint")}, manifest, folder)


def open_hub(repo: str, revision: str, cache: Path) -> Source:
    """Resolve `revision` to a commit, then fetch manifest.json and the preferences shards at that
    commit and check each against the manifest's sha256."""
    if not SAFE_LABEL.fullmatch(revision or ""):
        # it names the report folder: a '..' or a '/' would write the report somewhere else
        raise EvalError(f"--revision {revision!r} is not a version name such as v1.0.0 or a commit "
                        "(letters, digits, '.', '_', '-'; not starting with '.')")
    from .publish import PublishError, anonymous_first, hub_call, list_versions, resolve

    try:
        # a public dataset is read without sending the token
        api, commit = anonymous_first(None, lambda api: (api, resolve(api, repo, revision)))

        def fetch(rel: str) -> Path:
            return Path(hub_call(f"downloading {rel}", api.hf_hub_download, repo, rel, repo_type="dataset",
                             revision=commit, cache_dir=cache))

        manifest = mf.load_manifest(fetch(mf.MANIFEST), where=f"{repo}@{revision}:{mf.MANIFEST}")
        config = _config(manifest, f"{repo}@{revision}")
        files = {f["path"]: f for f in manifest.get("files", [])}
        local = {}
        shards = _shards(config)
        if not shards:
            raise EvalError(f"{repo}@{revision}: the manifest lists no '{CONFIG}' shard; evaluation needs the "
                            "preference pairs")
        for rel in shards:
            local[rel] = fetch(rel)
            if sha256_file(local[rel]) != files.get(rel, {}).get("sha256"):
                raise EvalError(f"{repo}@{revision}: {rel} does not match the manifest's sha256")
    except PublishError as e:
        msg = str(e)
        if "revision not found" in msg:
            try:
                known = ", ".join(tag for tag, _ in list_versions(repo)) or "none"
            except PublishError:
                known = "unknown"
            msg += f" (published versions: {known})"
        raise EvalError(msg) from None
    rel, path = next(iter(local.items()))
    folder = path.parents[len(rel.split("/")) - 1]  # the snapshot folder: <commit>/<rel>
    return Source(revision, {"repo": repo, "revision": revision, "commit": commit,
                          "recipe_fingerprint": manifest.get("fingerprint")}, manifest, folder)


def _config(manifest: dict, where: str) -> dict:
    splits = manifest["splits"]
    if CONFIG not in splits:
        raise EvalError(f"{where}: no '{CONFIG}' config (it has: {', '.join(sorted(splits)) or 'none'}); "
                        f"evaluation needs the preference pairs")
    return splits[CONFIG]


def _shards(config: dict, splits=None) -> list[str]:
    """The shard paths of the preferences config (of `splits`, default all). Each is a shard name inside
    the config's folder (`preferences/<split>-NNNNN-of-NNNNN.parquet`): builder.manifest_schema refused
    anything else when the manifest was loaded."""
    return [rel for split in splits or config for rel in config[split]["files"]]


def load_pairs(src: Source, splits: tuple[str, ...]) -> pd.DataFrame:
    where = f"{src.info['repo']}@{src.label}" if "repo" in src.info else str(src.folder)
    config = _config(src.manifest, where)
    missing = [s for s in splits if s not in config]
    if missing:
        raise EvalError(f"{src.label}: '{CONFIG}' has no split {missing[0]!r} (it has: {', '.join(config)}; "
                        "choose with --splits)")
    frames = []
    for rel in _shards(config, splits):
        try:  # its sha256 matched the manifest: that proves it is the file listed, not that it is Parquet
            df = pd.read_parquet(src.folder / rel)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise EvalError(f"{where}: {rel} is not a readable Parquet shard ({mf.clip(str(e))})") from None
        absent = [c for c in PAIR_COLUMNS if c not in df.columns]
        if absent:
            raise EvalError(f"{rel}: column {absent[0]!r} missing (a PERSONA preferences shard has "
                            f"{', '.join(PAIR_COLUMNS)})")
        frames.append(df[PAIR_COLUMNS])
    return pd.concat(frames, ignore_index=True)

