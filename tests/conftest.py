import hashlib
import os
import shutil
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests press Ctrl-C (SIGINT) on a build and on `persona serve`. A suite started in the background by a
# non-interactive shell (`make test &`) inherits SIGINT ignored, and every child with it: the build then runs
# on, and `persona serve` never stops (both seen in a CI run started that way). Python's handler here gives
# each child the default disposition back, and with it Python's KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# CI and sessions lay the read-only shared data beside the checkout: ../shared/data
SHARED_DATA = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))


# Fixtures that build with the real engine: a test using one (directly or through another fixture) is
# `slow` whatever its module says, so `pytest -m "not slow"` never waits for a build.
BUILDS = {"tiny_build", "shared_build"}


def pytest_collection_modifyitems(items):
    for item in items:
        if BUILDS & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set PERSONA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight Llama with a tokenizer trained on the fly: the real engine at ~10k tok/s."""
    from generation.tiny import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, shared_data, tiny_model):
    """One whole build with the tiny model (4 personas): (folder holding a/persona, its recipe)."""
    from .helpers import build, recipe_data, write_recipe
    tmp = tmp_path_factory.mktemp("build")
    recipe = write_recipe(tmp / "recipe.toml", recipe_data(tiny_model, personas=4, classify_limit=30,
                                                          max_tokens=1200, chunk_size=4))
    p = build(recipe, tmp / "a" / "persona", tmp / "a" / "work", check=True)
    (tmp / "a" / "stdout.txt").write_text(p.stdout)  # what the console showed (tests/test_build.py)
    (tmp / "a" / "stderr.txt").write_text(p.stderr)
    return tmp, recipe


@pytest.fixture(scope="session")
def census_dir(shared_data) -> Path:
    return shared_data / "census" / "acs-pums-2024-1yr"


@pytest.fixture(scope="session")
def prism_file(shared_data) -> Path:
    return shared_data / "prism" / "prism_opening_prompts.json"


@pytest.fixture(scope="session")
def census_small(tmp_path_factory, census_dir) -> Path:
    """Three small states of the PUMS records: builds that read the census in a second."""
    from .helpers import STATES
    folder = tmp_path_factory.mktemp("census")
    for name in STATES:
        shutil.copy(census_dir / name, folder / name)
    for dictionary in census_dir.glob("PUMS_Data_Dictionary_*.csv"):
        shutil.copy(dictionary, folder / dictionary.name)
    return folder


@pytest.fixture(scope="session")
def shared_build(tmp_path_factory, tiny_model, census_small, prism_file):
    """The crash tests' small recipe (3 personas on three small states, tests/helpers.py make_recipe)
    built once, uninterrupted, with the in-process engine: the reference that crashed, resumed, served
    and raced builds must reproduce, and the store that cheaper tests seed theirs from. Tests read it
    or copy it (shutil.copytree to tmp_path); none may change it, which is checked at the end."""
    from .helpers import build, make_recipe
    tmp = tmp_path_factory.mktemp("shared")
    recipe = make_recipe(tmp / "recipe.toml", tiny_model, census_small, prism_file)
    out, work = tmp / "persona", tmp / "work"
    build(recipe, out, work, timeout=1800, check=True)  # ~25 tests stand on it: room for a busy machine
    [store] = work.glob("*/requests.sqlite")
    before = _untouched(out, store)
    yield {"recipe": recipe, "out": out, "work": work, "store": store, "model": tiny_model, "census": census_small,
           "prompts": prism_file}
    assert _untouched(out, store) == before, f"a test changed the shared build in {tmp}: copy it instead"


def _untouched(out: Path, store: Path) -> tuple:
    """The output's SHA256SUMS (and that the files still match it) and a digest of every stored answer."""
    from builder.manifest import verify_folder
    digest = hashlib.sha256()
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        for row in db.execute("SELECT request_id, role, key, ok, text FROM results ORDER BY request_id"):
            digest.update(repr(row).encode())
    return (out / "SHA256SUMS").read_text(), verify_folder(out), digest.hexdigest()
