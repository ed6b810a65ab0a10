import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# CI and sessions lay the read-only shared data beside the checkout: ../shared/data
SHARED_DATA = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))


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
