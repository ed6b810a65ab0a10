"""Fetch the official census.gov files into a cache folder, checking their sha256."""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..ids import sha256_file
from .errors import CensusError

# The 2024 1-year ACS PUMS files for the whole US, and their data dictionary.
OFFICIAL_URLS = {
    "persons": "https://www2.census.gov/programs-surveys/acs/data/pums/2024/1-Year/csv_pus.zip",
    "housing": "https://www2.census.gov/programs-surveys/acs/data/pums/2024/1-Year/csv_hus.zip",
    "dictionary": "https://www2.census.gov/programs-surveys/acs/tech_docs/pums/data_dict/PUMS_Data_Dictionary_2024.csv",
}


@dataclass(frozen=True)
class Fetched:
    path: Path
    url: str
    sha256: str
    bytes: int
    reused: bool         # True when the cached copy was used


def download(url: str, cache_dir, sha256: str | None = None, *, timeout: float = 120) -> Fetched:
    """Fetch `url` into `cache_dir`, checking sha256 when pinned; a cached copy is re-used.

    Beside the file the cache keeps `<name>.json` with the url and the computed sha256, so a first
    unpinned download can be pinned in the manifest. Re-use: with a pin, any cached file of that name
    whose checksum matches (so official files copied in by hand are used offline); without one, the
    file this url downloaded earlier, if its checksum still matches the record. Otherwise the file is
    fetched again; a fresh download with a wrong checksum raises CensusError and is not kept.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/").rsplit("/", 1)[-1])).name
    if not name:
        raise CensusError(f"{url}: cannot tell the file name")
    path, meta = cache_dir / name, cache_dir / (name + ".json")
    expected = sha256.lower() if sha256 else None
    if path.exists():
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            recorded = {}
        want = expected or (recorded.get("sha256") if recorded.get("url") == url else None)
        if want is not None:
            digest = sha256_file(path)
            if digest == want:
                size = path.stat().st_size
                meta.write_text(json.dumps({"url": url, "sha256": digest, "bytes": size}, indent=1))
                return Fetched(path, url, digest, size, True)
    part = cache_dir / (name + ".part")
    h, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
                size += len(block)
    except OSError as e:    # URLError and HTTPError are OSErrors
        part.unlink(missing_ok=True)
        raise CensusError(f"{url}: download failed ({e})") from None
    digest = h.hexdigest()
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise CensusError(f"{url}: sha256 mismatch: expected {expected}, got {digest}")
    os.replace(part, path)
    meta.write_text(json.dumps({"url": url, "sha256": digest, "bytes": size}, indent=1))
    return Fetched(path, url, digest, size, False)
