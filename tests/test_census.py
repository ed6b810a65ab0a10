"""Census reading, validation, data dictionary, download and labels (generation/census/)."""
from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from generation.census import (
    OUTPUT_COLUMNS,
    WIDE,
    CensusError,
    download,
    label_people,
    read_census,
    read_dictionary,
    resolve_states,
)
from generation.sampling import sample_people

FIX = Path(__file__).parent / "fixtures" / "census"
TINY_DICT = FIX / "PUMS_Data_Dictionary_tiny.csv"

_spec = importlib.util.spec_from_file_location("census_synthetic", FIX / "synthetic.py")
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)


# ----------------------------------------------------------------------------- data dictionary

def test_dictionary_labels_codes_ranges_and_na():
    d = read_dictionary(TINY_DICT)
    assert d.label("SEX", 2) == "Female"
    assert d.label("SCHL", 21) == "Bachelor's degree"          # "21" in the file, int code here
    assert d.label("ESR", None) == "N/A (less than 16 years old)"
    assert d.label("PINCP", -500) == "Loss $1 to $19997 (Rounded components)"   # a range row
    assert d.label("STATE", 6) == "California/CA"
    # SERIALNO/STATE/RT are listed in the housing and the person section: first one kept, no duplicates
    assert sorted(d["STATE"].codes) == [1, 5, 6, 41, 48, 53]


def test_dictionary_unknown_code_gets_a_clear_label():
    d = read_dictionary(TINY_DICT)
    label = d.label("INDP", 6195)
    assert "Unknown code 6195" in label and "INDP" in label


def test_dictionary_unknown_variable_is_an_error():
    with pytest.raises(CensusError, match="FOO.*not in the data dictionary"):
        read_dictionary(TINY_DICT).label("FOO", 1)


@pytest.mark.parametrize("text, match", [
    ('NAME,SEX,C,1,"Sex"\nVAL,SEX,C,1,"1"\n', r"row 2: VAL row needs 7 fields"),
    ('VAL,SEX,C,1,"1","1","Male"\n', r"row 1: VAL row for SEX comes before its NAME row"),
    ('hello,world\n', r"row 1: expected a NAME or VAL row"),
    ('\n\n', r"no NAME rows"),
])
def test_dictionary_malformed_rows_name_file_and_row(tmp_path, text, match):
    p = tmp_path / "dict.csv"
    p.write_text(text)
    with pytest.raises(CensusError, match=match) as e:
        read_dictionary(p)
    assert "dict.csv" in str(e.value)


def test_real_dictionary_parses(census_dir):
    d = read_dictionary(census_dir / "PUMS_Data_Dictionary_2023.csv")
    assert len(d.variables) == 521          # 528 NAME rows, 7 listed in both sections
    assert d.label("HISP", 2) == "Mexican"
    assert d.label("OCCP", 10) == "MGR-Chief Executives And Legislators"


# ----------------------------------------------------------------------------- Parquet reader

def _write(tmp_path, df: pd.DataFrame, name="p_53.parquet") -> Path:
    folder = tmp_path / "census"
    folder.mkdir(exist_ok=True)
    df.to_parquet(folder / name, index=False)
    return folder


def _people(n=30, state=53):
    return synthetic.people(n, state, seed=1)


def test_reads_parquet_folder_with_narrow_file(tmp_path):
    synthetic.write_parquet_folder(tmp_path / "c", {6: 40, 53: 50, 1: 30}, narrow=(6,))
    f = read_census(tmp_path / "c", dictionary=TINY_DICT, unknown_codes="error")
    assert len(f) == 120
    assert f.data.groupby("STATE")["narrow"].all().to_dict() == {1: False, 6: True, 53: False}
    assert f.data.loc[f.data["narrow"], WIDE].isna().all().all()
    # small integer codes, not int64/object
    assert str(f.data["AGEP"].dtype) == "Int8" and str(f.data["INDP"].dtype) == "Int16"
    assert int(f.data["PWGTP"].sum()) == sum(int(pd.read_parquet(p)["PWGTP"].sum())
                                            for p in (tmp_path / "c").glob("*.parquet"))
    assert f.extras == []


def test_states_filter_reads_only_those_states(tmp_path):
    synthetic.write_parquet_folder(tmp_path / "c", {6: 40, 53: 50, 1: 30}, narrow=(6,))
    f = read_census(tmp_path / "c", states=["WA", 1])
    assert sorted(f.data["STATE"].unique().tolist()) == [1, 53]
    assert [s["file"] for s in f.sources] == ["p_01.parquet", "p_53.parquet"]


@pytest.mark.parametrize("states, match", [(["XX"], "unknown state 'XX'"), ([72], "unknown state 72"),
                                           (["NY"], r"no file for state\(s\) NY \(36\)")])
def test_unknown_state_filter(tmp_path, states, match):
    folder = _write(tmp_path, _people())
    with pytest.raises(CensusError, match=match):
        read_census(folder, states=states)


def test_resolve_states_accepts_fips_and_postal():
    assert resolve_states(["06", 48, "ny"]) == [6, 36, 48]
    assert resolve_states(None) is None


def test_missing_core_column(tmp_path):
    folder = _write(tmp_path, _people().drop(columns=["AGEP"]))
    with pytest.raises(CensusError, match=r"p_53\.parquet: missing column AGEP"):
        read_census(folder)


def test_partial_wide_columns_is_a_missing_column(tmp_path):
    # a file with some attribute columns but not all is broken, not narrow
    folder = _write(tmp_path, _people().drop(columns=["ESR", "MIL"]))
    with pytest.raises(CensusError, match=r"p_53\.parquet: missing columns ESR, MIL"):
        read_census(folder)


def test_wrong_column_type(tmp_path):
    df = _people()
    df["AGEP"] = df["AGEP"].astype(str)
    folder = _write(tmp_path, df)
    with pytest.raises(CensusError, match=r"p_53\.parquet: column AGEP has type (large_)?string, expected integer"):
        read_census(folder)


def test_float_codes_are_a_wrong_type(tmp_path):
    df = _people()
    df["SCHL"] = df["SCHL"].astype("float64")
    with pytest.raises(CensusError, match=r"p_53\.parquet: column SCHL has type double"):
        read_census(_write(tmp_path, df))


def test_value_out_of_range_for_its_type(tmp_path):
    df = _people()
    df.loc[3, "SEX"] = 1000          # does not fit int8: a garbage code
    with pytest.raises(CensusError, match=r"p_53\.parquet: column SEX: values do not fit int8"):
        read_census(_write(tmp_path, df))


def test_empty_file(tmp_path):
    folder = _write(tmp_path, _people().iloc[:0])
    with pytest.raises(CensusError, match=r"p_53\.parquet: empty file"):
        read_census(folder)


def test_zero_byte_file(tmp_path):
    folder = tmp_path / "census"
    folder.mkdir()
    (folder / "p_53.parquet").write_bytes(b"")
    with pytest.raises(CensusError, match=r"p_53\.parquet: not a readable Parquet file"):
        read_census(folder)


def test_truncated_parquet(tmp_path):
    folder = _write(tmp_path, _people(200))
    p = folder / "p_53.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CensusError, match=r"p_53\.parquet: not a readable Parquet file, truncated or corrupt"):
        read_census(folder)


def test_corrupt_parquet_data_pages(tmp_path):
    # valid footer, garbage in the column chunks
    folder = _write(tmp_path, _people(200))
    p = folder / "p_53.parquet"
    raw = bytearray(p.read_bytes())
    footer = pq.ParquetFile(p).metadata.serialized_size + 8
    for i in range(4, len(raw) - footer):
        raw[i] = 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CensusError, match=r"p_53\.parquet: cannot read the Parquet data, truncated or corrupt"):
        read_census(folder)


def test_blank_in_never_blank_column_names_row(tmp_path):
    df = _people()
    df["SEX"] = df["SEX"].astype("Int64")
    df.loc[7, "SEX"] = pd.NA
    with pytest.raises(CensusError, match=r"p_53\.parquet: column SEX row 7: blank value"):
        read_census(_write(tmp_path, df))


def test_non_positive_weight(tmp_path):
    df = _people()
    df.loc[4, "PWGTP"] = 0
    with pytest.raises(CensusError, match=r"p_53\.parquet: column PWGTP row 4: person weight must be positive"):
        read_census(_write(tmp_path, df))


def test_unknown_code_error_mode_names_file_column_row(tmp_path):
    df = _people()
    df.loc[5, "MIL"] = 7
    folder = _write(tmp_path, df)
    with pytest.raises(CensusError, match=r"p_53\.parquet: column MIL row 5: code 7 not in the data dictionary"):
        read_census(folder, dictionary=TINY_DICT, unknown_codes="error")


def test_unknown_code_label_mode_warns_and_labels(tmp_path):
    df = _people(60)
    adult = int(df.index[(df["AGEP"] >= 17)][0])
    df.loc[adult, "MIL"] = 7
    folder = _write(tmp_path, df)
    with pytest.warns(UserWarning, match=r"column MIL row \d+: code 7 not in the data dictionary"):
        f = read_census(folder, dictionary=TINY_DICT)
    labelled = label_people(sample_people(f, 60, 1), f.dictionary)
    assert (labelled["veteran_status"] == "Unknown code 7 for MIL (not in the data dictionary)").sum() == 1


def test_unknown_state_code_in_file(tmp_path):
    df = _people()
    df["STATE"] = "72"        # Puerto Rico is not in the 50 states + DC frame
    with pytest.raises(CensusError, match=r"p_53\.parquet: column STATE row 0: code 72"):
        read_census(_write(tmp_path, df))


def test_not_a_folder_or_zip(tmp_path):
    with pytest.raises(CensusError, match="no such file or folder"):
        read_census(tmp_path / "nope")


# ----------------------------------------------------------------------------- official census.gov format

def test_official_zip_with_housing_join():
    f = read_census(FIX, dictionary=TINY_DICT, unknown_codes="error")
    assert len(f) == 36 and not f.data["narrow"].any()
    assert f.extras == ["ANC1P", "POBP", "LANP", "HHT", "HUPAC", "HHL"]
    with zipfile.ZipFile(FIX / "csv_hus.zip") as z:
        hus = pd.read_csv(z.open("psam_husa.csv"), dtype={"SERIALNO": str})
    merged = f.data.merge(hus, on="SERIALNO", how="left", suffixes=("", "_hus"))
    hu = merged["SERIALNO"].str.contains("HU")
    assert (merged.loc[hu, "HHT"].astype(int) == merged.loc[hu, "HHT_hus"]).all()
    assert merged.loc[~hu, ["HHT", "HUPAC", "HHL"]].isna().all().all()   # group quarters: N/A
    # person order kept from the CSV members (psam_pusa then psam_pusb)
    with zipfile.ZipFile(FIX / "csv_pus.zip") as z:
        serials = pd.concat([pd.read_csv(z.open(m), dtype={"SERIALNO": str})["SERIALNO"]
                             for m in ("psam_pusa.csv", "psam_pusb.csv")])
    assert f.data["SERIALNO"].tolist() == serials.tolist()


def test_official_zip_without_housing_and_state_filter():
    f = read_census(FIX / "csv_pus.zip", states=["TX"])
    assert set(f.data["STATE"]) == {48} and len(f) == 9
    assert "HHT" not in f.data.columns and "ANC1P" in f.data.columns


def test_official_labels_use_extra_columns():
    f = read_census(FIX, dictionary=TINY_DICT)
    out = label_people(sample_people(f, 36, 3), f.dictionary)
    assert out["ancestry"].notna().all() and out["place_of_birth"].notna().all()
    assert set(out["place_of_birth"]) <= {"Alabama", "California", "New York", "Texas", "Washington",
                                          "China", "Mexico"}
    gq = out["source_serialno"].str.contains("GQ")
    assert (out.loc[gq, "household_type"] == "Not applicable (lives in group quarters)").all()
    assert out.loc[~gq, "household_type"].str.contains("household").all()
    assert all(g == [] for g in out["generated_fields"])   # LANP present: nothing left for the LLM
    other = out["code_LANX"] == 1
    assert other.any() and out.loc[other, "household_language"].isin(["German", "Spanish", "Chinese", "Tagalog"]).all()


def _rewrite_member(src: Path, dst: Path, member: str, edit) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, edit(data.decode()).encode() if name == member else data)
    return dst


def _set_cell(line: int, column: str, value: str):
    """An edit for _rewrite_member: CSV line `line` (0 = header) gets `value` in `column`."""
    def edit(text):
        lines = text.splitlines()
        cols = lines[line].split(",")
        cols[lines[0].split(",").index(column)] = value
        lines[line] = ",".join(cols)
        return "\n".join(lines) + "\n"
    return edit


def test_official_bad_value_names_member_and_column(tmp_path):
    z = _rewrite_member(FIX / "csv_pus.zip", tmp_path / "csv_pus.zip", "psam_pusb.csv", _set_cell(1, "AGEP", "forty"))
    with pytest.raises(CensusError, match=r"csv_pus\.zip:psam_pusb\.csv: column AGEP: .*forty"):
        read_census(z)


def test_official_missing_column_names_member(tmp_path):
    def edit(text):
        return "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 9) for line in text.splitlines()) + "\n"
    z = _rewrite_member(FIX / "csv_pus.zip", tmp_path / "csv_pus.zip", "psam_pusa.csv", edit)
    with pytest.raises(CensusError, match=r"csv_pus\.zip:psam_pusa\.csv: missing column AGEP"):
        read_census(z)


def test_official_housing_missing_column(tmp_path):
    def edit(text):
        return text.replace("HUPAC", "HUPACX")
    h = _rewrite_member(FIX / "csv_hus.zip", tmp_path / "csv_hus.zip", "psam_husa.csv", edit)
    with pytest.raises(CensusError, match=r"csv_hus\.zip:psam_husa\.csv: missing column HUPAC"):
        read_census(FIX / "csv_pus.zip", housing=h)


def test_official_unknown_housing_code_and_out_of_range_value(tmp_path):
    h = _rewrite_member(FIX / "csv_hus.zip", tmp_path / "csv_hus.zip", "psam_husa.csv", _set_cell(2, "HHT", "9"))
    with pytest.raises(CensusError, match=r"csv_hus\.zip:psam_husa\.csv: column HHT row 1: code 9 not in"):
        read_census(FIX / "csv_pus.zip", housing=h, dictionary=TINY_DICT, unknown_codes="error")

    sex300 = _set_cell(3, "SEX", "300")  # does not fit the int8 code column
    z = _rewrite_member(FIX / "csv_pus.zip", tmp_path / "csv_pus.zip", "psam_pusa.csv", sex300)
    with pytest.raises(CensusError, match=r"psam_pusa\.csv: column SEX: .*int8.*300"):
        read_census(z)


def test_official_not_a_zip(tmp_path):
    bad = tmp_path / "csv_pus.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CensusError, match=r"csv_pus\.zip: not a readable zip file"):
        read_census(bad)


def test_official_zip_without_person_members(tmp_path):
    z = tmp_path / "csv_pus.zip"
    with zipfile.ZipFile(z, "w") as out:
        out.writestr("readme.txt", "hello")
    with pytest.raises(CensusError, match=r"no psam_pus\*\.csv member"):
        read_census(z)


def test_official_header_only_member_is_empty(tmp_path):
    z = _rewrite_member(FIX / "csv_pus.zip", tmp_path / "csv_pus.zip", "psam_pusa.csv",
                        lambda text: text.splitlines()[0] + "\n")
    with pytest.raises(CensusError, match=r"psam_pusa\.csv: empty file"):
        read_census(z)


# ----------------------------------------------------------------------------- download

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_file_url_pins_and_reuses(tmp_path):
    src = tmp_path / "src" / "csv_pus.zip"
    src.parent.mkdir()
    src.write_bytes(b"census bytes" * 1000)
    url = src.as_uri()
    first = download(url, tmp_path / "cache")
    assert not first.reused and first.sha256 == _sha(src.read_bytes())
    assert first.path.read_bytes() == src.read_bytes()
    # the computed checksum is recorded for the manifest
    meta = json.loads((tmp_path / "cache" / "csv_pus.zip.json").read_text())
    assert meta == {"url": url, "sha256": first.sha256, "bytes": 12000}
    again = download(url, tmp_path / "cache", sha256=first.sha256)
    assert again.reused and again.path == first.path


def test_download_checksum_mismatch_keeps_nothing(tmp_path):
    src = tmp_path / "f.csv"
    src.write_text("a,b\n")
    with pytest.raises(CensusError, match=r"sha256 mismatch: expected 0{64}, got " + _sha(b"a,b\n")):
        download(src.as_uri(), tmp_path / "cache", sha256="0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


class _Server:
    """http.server on 127.0.0.1 serving a folder and counting GET requests."""

    def __init__(self, folder: Path):
        self.gets = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):
                server.gets += 1
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_http_cache_and_refetch_of_corrupt_cache(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(FIX / "csv_pus.zip", served / "csv_pus.zip")
    pinned = _sha((FIX / "csv_pus.zip").read_bytes())
    cache = tmp_path / "cache"
    with _Server(served) as srv:
        got = download(srv.url + "csv_pus.zip", cache, sha256=pinned)
        assert (got.reused, srv.gets) == (False, 1)
        assert download(srv.url + "csv_pus.zip", cache, sha256=pinned).reused and srv.gets == 1
        # a damaged cached copy fails the pinned checksum and is fetched again
        got.path.write_bytes(b"damaged")
        again = download(srv.url + "csv_pus.zip", cache, sha256=pinned)
        assert (again.reused, srv.gets, again.sha256) == (False, 2, pinned)
        # the downloaded official zip reads like the fixture
        assert len(read_census(again.path)) == 36
        # an official file put into the cache by hand is used when its pinned checksum matches
        for name in ("hand", "hand2"):
            (tmp_path / name).mkdir()
            shutil.copy(FIX / "csv_pus.zip", tmp_path / name / "csv_pus.zip")
        assert download(srv.url + "csv_pus.zip", tmp_path / "hand", sha256=pinned).reused and srv.gets == 2
        # ... but not without a pin: nothing says what that file is
        assert not download(srv.url + "csv_pus.zip", tmp_path / "hand2").reused and srv.gets == 3
        with pytest.raises(CensusError, match=r"missing\.zip: download failed .*404"):
            download(srv.url + "missing.zip", cache)


# ----------------------------------------------------------------------------- labels

def test_label_people_columns_and_renderings(tmp_path):
    synthetic.write_parquet_folder(tmp_path / "c", {53: 4000, 6: 200}, narrow=(6,))
    f = read_census(tmp_path / "c", dictionary=TINY_DICT)
    s = sample_people(f, 120, 5)
    out = label_people(s, TINY_DICT)       # a path works as well as a Dictionary
    code_cols = [c for c in out.columns if c.startswith("code_")]
    assert list(out.columns) == OUTPUT_COLUMNS + code_cols
    assert out["source_sporder"].dtype == "int64" and out["age"].dtype == "int64"
    assert len(out) == 120 and out["source_serialno"].map(type).eq(str).all()

    def rows(mask):
        return out[mask.fillna(False).to_numpy(bool)]

    kids = rows(out["code_AGEP"] < 16)
    assert (kids["employment_status"] == "Not applicable (under 16)").all()
    assert (kids["class_of_worker"] == "Not applicable (under 16)").all()
    assert (rows(out["code_AGEP"] < 15)["income"] == "Not applicable (under 15)").all()
    assert (rows(out["code_AGEP"] < 17)["veteran_status"] == "Not applicable (under 17)").all()
    assert (rows(out["code_SEX"] == 1)["fertility"] == "Not applicable (male)").all()
    earners = rows(out["code_PINCP"] > 0)
    assert all(t == f"${c:,} per year" for t, c in zip(earners["income"], earners["code_PINCP"]))
    assert (rows(out["code_PINCP"] == 0)["income"] == "No income").all()
    hisp = rows(out["code_HISP"] > 1)
    assert hisp["race"].str.match(r"Hispanic or Latino \((Mexican|Puerto Rican|All Other .*)\), ").all()
    assert rows(out["code_HISP"] == 1)["race"].str.startswith("Not Hispanic or Latino, ").all()
    other = rows(out["code_LANX"] == 1)
    assert (other["household_language"] == "A language other than English").all()
    assert all("household_language" in g for g in other["generated_fields"])
    english = rows(out["code_LANX"] == 2)
    assert (english["ability_to_speak_english"] == "Speaks only English at home").all()
    assert (english["household_language"] == "English only").all()
    uninsured = rows(out["code_HICOV"] == 2)
    assert (uninsured["health_insurance"] == "No health insurance").all()
    both = rows((out["code_PRIVCOV"] == 1) & (out["code_PUBCOV"] == 1))
    assert (both["health_insurance"] == "Private and public insurance").all()
    workers = rows(out["code_OCCP"].notna())
    assert not workers["occupation_category"].str.match(r"^[A-Z]{3}-").any()   # "MGR-" prefix stripped
    assert out["ancestry"].isna().all() and out["ancestry"].map(lambda v: v is None).all()
    base = ["ancestry", "place_of_birth", "household_type", "family_presence_and_age"]
    assert all(set(base) <= set(g) for g in out["generated_fields"])
    # hot-deck: CA people carry the imputed attribute names and their donor, others nothing
    ca = out["state"] == "California"
    assert ca.any() and all("income" in i and "employment_status" in i and "nativity" not in i
                            for i in out.loc[ca, "imputed_fields"])
    assert out.loc[ca, "code_DONOR"].str.match(r"^2024(HU|GQ)\d{7}-\d{2}$").all()
    assert all(i == [] for i in out.loc[~ca, "imputed_fields"]) and out.loc[~ca, "code_DONOR"].isna().all()
    always = [c for c in OUTPUT_COLUMNS if c not in base + ["imputed_fields", "generated_fields"]]
    assert not out[always].isna().any().any()
    assert not out[always].apply(lambda col: col.astype(str).str.contains("Unknown code")).any().any()


def test_label_people_without_dictionary_or_columns():
    with pytest.raises(CensusError, match="needs the PUMS data dictionary"):
        label_people(pd.DataFrame(), None)
    with pytest.raises(CensusError, match="sample table: missing columns"):
        label_people(pd.DataFrame({"SERIALNO": ["x"]}), TINY_DICT)
