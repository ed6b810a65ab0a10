import os
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
def census_dir(shared_data) -> Path:
    return shared_data / "census" / "acs-pums-2024-1yr"


@pytest.fixture(scope="session")
def prism_file(shared_data) -> Path:
    return shared_data / "prism" / "prism_opening_prompts.json"
