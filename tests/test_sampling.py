"""Weighted sampling, CA/TX hot-deck imputation and fidelity (generation/sampling/)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from generation.census import STATES, WIDE, CensusError, label_people, read_census
from generation.sampling import (
    AGE_BANDS,
    FIDELITY,
    IMPUTE_AGE_EDGES,
    IMPUTED,
    PAPER_N,
    PAPER_SEED,
    draw_more,
    fidelity_report,
    impute,
    sample_people,
    state_shares,
    systematic_pps,
)

FIX = Path(__file__).parent / "fixtures" / "census"
TINY_DICT = FIX / "PUMS_Data_Dictionary_tiny.csv"
_spec = importlib.util.spec_from_file_location("census_synthetic", FIX / "synthetic.py")
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)

# Pacific: WA, OR (+ CA narrow); West South Central: AR (+ TX narrow); Alabama elsewhere.
SYNTH_STATES = {1: 1500, 5: 2500, 6: 800, 41: 1500, 48: 700, 53: 2500}


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    folder = tmp_path_factory.mktemp("census")
    synthetic.write_parquet_folder(folder, SYNTH_STATES, narrow=(6, 48), seed=3)
    return read_census(folder, dictionary=TINY_DICT, unknown_codes="error")


def _division(fips):
    return STATES[int(fips)][3]


# ----------------------------------------------------------------------------- systematic PPS core

def test_systematic_pps_inclusion_is_proportional_to_weight():
    g = np.random.default_rng(0)
    w = g.integers(1, 40, 300).astype(float)
    w[17] = 2000                     # heavier than the step: must be a certainty
    n, runs = 20, 4000
    hits = np.zeros(len(w))
    for start in g.random(runs):
        picked = systematic_pps(w, n, start)
        assert len(picked) == n and len(set(picked)) == n
        hits[picked] += 1
    assert hits[17] == runs
    rest = np.delete(np.arange(len(w)), 17)
    expected = (n - 1) * w[rest] / w[rest].sum()
    # binomial standard error per unit; a wrong design (e.g. equal probabilities) is far outside
    se = np.sqrt(expected * (1 - expected) / runs)
    assert np.abs(hits[rest] / runs - expected).max() < 5 * se.max()
    assert np.corrcoef(hits[rest], w[rest])[0, 1] > 0.98


def test_systematic_pps_cascading_certainties():
    # 100 is heavier than the first step (115/3); once taken, 10 is heavier than the new step (15/2)
    w = np.array([100, 10, 1, 1, 1, 1, 1], float)
    for start in (0.0, 0.5, 0.99):
        picked = systematic_pps(w, 3, start)
        assert {0, 1} <= set(picked) and len(set(picked)) == 3


# ----------------------------------------------------------------------------- sample_people

def test_same_seed_same_sample_different_seed_different(frame):
    a = sample_people(frame, 300, 11)
    b = sample_people(frame, 300, 11)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(label_people(a, frame.dictionary), label_people(b, frame.dictionary))
    c = sample_people(frame, 300, 12)
    assert set(a["person_id"]) != set(c["person_id"])
    for method in ("es",):
        e1, e2 = sample_people(frame, 300, 11, method=method), sample_people(frame, 300, 11, method=method)
        pd.testing.assert_frame_equal(e1, e2)
        assert set(e1["person_id"]) != set(a["person_id"])


@pytest.mark.parametrize("method", ["systematic", "es"])
def test_sample_is_distinct_people_of_the_frame(frame, method):
    s = sample_people(frame, 500, 4, method=method)
    assert len(s) == 500 and s["person_id"].is_unique
    ids = set(zip(frame.data["SERIALNO"], frame.data["SPORDER"].astype(int)))
    assert all((r, int(o)) in ids for r, o in zip(s["SERIALNO"], s["SPORDER"]))
    assert (s["person_id"] == [f"{a}-{int(b):02d}" for a, b in zip(s["SERIALNO"], s["SPORDER"])]).all()
    assert (s["draw_round"] == 0).all()


@pytest.mark.parametrize("method", ["systematic", "es"])
def test_heavier_people_are_drawn_more_often(frame, method):
    w = frame.data["PWGTP"].to_numpy()
    heavy = set(frame.data["SERIALNO"][w > np.quantile(w, 0.8)] + "-" +
                frame.data["SPORDER"][w > np.quantile(w, 0.8)].astype(int).map("{:02d}".format))
    share = np.mean([s in heavy for seed in range(5) for s in sample_people(frame, 200, seed, method=method)["person_id"]])
    expected = w[w > np.quantile(w, 0.8)].sum() / w.sum()       # ~0.36 by weight, vs 0.2 by head count
    assert abs(share - expected) < 0.06


def test_min_age_and_states_options(frame):
    s = sample_people(frame, 200, 1, min_age=18, states=["WA", "CA"])
    assert (s["AGEP"] >= 18).all() and set(s["STATE"].astype(int)) == {6, 53}


def test_bad_options(frame):
    with pytest.raises(ValueError, match="method must be one of"):
        sample_people(frame, 10, 1, method="srs")
    with pytest.raises(CensusError, match="cannot draw 999999 distinct people"):  # one line in the CLI
        sample_people(frame, 999_999, 1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_people(frame, 0, 1)
    with pytest.raises(CensusError, match="unknown state 'ZZ'"):
        sample_people(frame, 10, 1, states=["ZZ"])


def test_sample_order_is_seeded_not_by_state(frame):
    s = sample_people(frame, 400, 2)
    # systematic selection walks the frame state by state; the returned order is a seeded shuffle
    assert not s["STATE"].astype(int).is_monotonic_increasing
    first = s.head(100)["STATE"].astype(int).value_counts(normalize=True)
    assert first.index.nunique() >= 5


def test_state_shares_follow_weights(frame):
    s = sample_people(frame, 600, 9)
    pop = frame.data.groupby("STATE")["PWGTP"].sum() / frame.data["PWGTP"].sum()
    got = state_shares(s)
    for fips, share in pop.items():
        # implicit stratification by state: within about one person of the expected count
        assert abs(got[STATES[int(fips)][0]] * 600 - share * 600) <= 1.5


# ----------------------------------------------------------------------------- hot-deck imputation

def test_imputation_fills_narrow_people_consistently(frame):
    s = sample_people(frame, 800, 21)
    narrow = s["narrow"].to_numpy()
    assert narrow.sum() > 100
    rec, wide = s[narrow], s[~narrow]
    assert all(c == list(IMPUTED) for c in rec["imputed_columns"])
    assert all(c == [] for c in wide["imputed_columns"]) and wide["donor_id"].isna().all()
    # fields PUMS answers for everyone are now filled; universes follow the recipient's own age/sex
    assert rec[["HICOV", "PRIVCOV", "PUBCOV", "DEAR", "DEYE", "MAR", "NATIVITY"]].notna().all().all()
    assert rec.loc[rec["AGEP"] >= 16, "ESR"].notna().all() and rec.loc[rec["AGEP"] < 16, "ESR"].isna().all()
    assert rec.loc[rec["AGEP"] >= 15, "PINCP"].notna().all() and rec.loc[rec["AGEP"] < 15, "PINCP"].isna().all()
    assert rec.loc[rec["SEX"] == 1, "FER"].isna().all()
    assert (rec["NATIVITY"] == np.where(rec["CIT"] <= 3, 1, 2)).all()
    # the donor is a real full-file person matching age band, sex and disability, whose values were copied
    donors = frame.data.set_index(frame.data["SERIALNO"] + "-" + frame.data["SPORDER"].astype(int).map("{:02d}".format))
    d = donors.loc[rec["donor_id"]]
    assert not d["narrow"].any()
    assert (np.digitize(d["AGEP"], IMPUTE_AGE_EDGES) == np.digitize(rec["AGEP"], IMPUTE_AGE_EDGES)).all()
    assert (d["SEX"].to_numpy() == rec["SEX"].to_numpy()).all() and (d["DIS"].to_numpy() == rec["DIS"].to_numpy()).all()
    for col in IMPUTED:
        pd.testing.assert_series_equal(d[col].reset_index(drop=True), rec[col].reset_index(drop=True),
                                       check_names=False)
    # mostly from the same census division (CA: Pacific, TX: West South Central)
    same = np.mean([_division(a) == _division(b) for a, b in zip(rec["STATE"], d["STATE"])])
    assert same > 0.9


def test_donor_depends_on_seed_and_person_only(frame):
    s = sample_people(frame, 300, 5)
    rec = s[s["narrow"]]
    again = impute(frame, rec.iloc[::-1].drop(columns=["imputed_columns", "donor_id"]), 5)
    assert dict(zip(again["person_id"], again["donor_id"])) == dict(zip(rec["person_id"], rec["donor_id"]))
    other = impute(frame, rec.drop(columns=["imputed_columns", "donor_id"]), 6)
    assert (other["donor_id"].to_numpy() != rec["donor_id"].to_numpy()).any()


def test_match_is_relaxed_when_no_exact_donor(tmp_path):
    # CA recipients are Pacific Islanders (RAC1P 7): no WA donor is, so race is relaxed, division kept;
    # AL holds the only people aged 35-44 (one match band), so CA 40-year-olds need the nationwide level
    folder = tmp_path / "c"
    synthetic.write_parquet_folder(folder, {53: 3000, 1: 3000}, seed=8)
    wa = pd.read_parquet(folder / "p_53.parquet")
    wa = wa[(wa["AGEP"] < 35) | (wa["AGEP"] >= 45)]
    wa.to_parquet(folder / "p_53.parquet", index=False)
    ca = synthetic.people(60, 6, seed=9, first_serial=90_000)[synthetic.CORE]
    ca["RAC1P"] = 7
    ca.loc[:9, "AGEP"], ca.loc[:9, "DIS"], ca.loc[:9, "SCHL"] = 40, 2, 16
    ca.to_parquet(folder / "p_06_narrow.parquet", index=False)
    f = read_census(folder)
    s = sample_people(f, 60, 1, states=["CA"])
    donors = f.data.set_index(f.data["SERIALNO"] + "-" + f.data["SPORDER"].astype(int).map("{:02d}".format))
    d = donors.loc[s["donor_id"]]
    assert (d["RAC1P"] != 7).all()
    band = s["AGEP"].between(35, 44).to_numpy()
    assert band.sum() >= 10
    assert (d.loc[band, "STATE"] == 1).all() and (d.loc[~band, "STATE"] == 53).all()


def test_no_donors_is_a_clear_error(tmp_path):
    synthetic.write_parquet_folder(tmp_path / "c", {6: 50, 53: 50}, narrow=(6,))
    f = read_census(tmp_path / "c", states=["CA"])
    with pytest.raises(CensusError, match="needs donor records"):
        sample_people(f, 10, 1)


# ----------------------------------------------------------------------------- draw_more

def test_draw_more_excludes_and_is_deterministic(frame):
    s = sample_people(frame, 400, 7)
    exclude = list(s["person_id"])
    m1 = draw_more(frame, 50, 7, 1, exclude)
    assert len(m1) == 50 and m1["person_id"].is_unique and not set(m1["person_id"]) & set(exclude)
    assert (m1["draw_round"] == 1).all() and m1.loc[m1["narrow"], "donor_id"].notna().all()
    pd.testing.assert_frame_equal(m1, draw_more(frame, 50, 7, 1, exclude))
    # pairs work as well as ids
    pairs = [(a, int(b)) for a, b in zip(s["SERIALNO"], s["SPORDER"])]
    pd.testing.assert_frame_equal(m1, draw_more(frame, 50, 7, 1, pairs))
    m2 = draw_more(frame, 50, 7, 2, exclude + list(m1["person_id"]))
    assert not set(m2["person_id"]) & (set(exclude) | set(m1["person_id"]))
    # excluding someone only removes them: the others keep their place in the draw
    m1b = draw_more(frame, 49, 7, 1, exclude + [m1["person_id"].iloc[0]])
    assert set(m1b["person_id"]) <= set(draw_more(frame, 60, 7, 1, exclude)["person_id"])


def test_draw_more_bad_input(frame):
    with pytest.raises(ValueError, match="round must be 1, 2"):
        draw_more(frame, 5, 1, 0)
    with pytest.raises(ValueError, match="not a person id"):
        draw_more(frame, 5, 1, 1, ["nonsense"])


# ----------------------------------------------------------------------------- fidelity

def test_fidelity_report_shape_and_math(frame):
    s = sample_people(frame, 500, 3)
    r = fidelity_report(frame, s)
    json.dumps(r)                                   # goes into manifest.json as is
    rows = pd.DataFrame(r["rows"])
    assert list(r["tvd"]) == list(FIDELITY)
    for attr, group in rows.groupby("attribute"):
        assert group["population_share"].sum() == pytest.approx(1, abs=1e-5)
        assert group["sample_share"].sum() == pytest.approx(1, abs=1e-5)
        tvd = 0.5 * (group["population_share"] - group["sample_share"]).abs().sum()
        assert r["tvd"][attr] == pytest.approx(tvd, abs=1e-5)
    assert rows.loc[rows["attribute"] == "age_band", "category"].tolist() == AGE_BANDS
    assert "expected hot-deck" in r["basis"]["income_band"] and r["basis"]["sex"] == "all records observed"
    sex = rows[rows["attribute"] == "sex"].set_index("category")["population_share"]
    d = frame.data
    assert sex["Female"] == pytest.approx(d.loc[d["SEX"] == 2, "PWGTP"].sum() / d["PWGTP"].sum(), abs=1e-6)


def test_fidelity_is_zero_for_the_population_itself(tmp_path):
    # equal weights and a "sample" that is every person: population and sample shares coincide
    synthetic.write_parquet_folder(tmp_path / "c", {53: 300, 1: 200})
    f = read_census(tmp_path / "c")
    f.data["PWGTP"] = pd.array(np.ones(len(f), dtype=np.int32), dtype="Int32")
    r = fidelity_report(f, f.data)
    assert max(r["tvd"].values()) < 1e-9
    r = fidelity_report(f, f.data[f.data["SEX"] == 1])
    assert r["tvd"]["sex"] == pytest.approx((f.data["SEX"] == 2).mean(), abs=1e-6)


def test_expected_imputed_income_uses_donor_cells(tmp_path):
    # CA people copy of WA people: their expected income distribution equals WA's in the same cells
    folder = tmp_path / "c"
    synthetic.write_parquet_folder(folder, {53: 2000}, seed=4)
    wa = pd.read_parquet(folder / "p_53.parquet")
    ca = wa.copy()
    ca["STATE"], ca["SERIALNO"] = "06", "2024HU9" + ca["SERIALNO"].str[-6:]
    ca[synthetic.CORE].to_parquet(folder / "p_06_narrow.parquet", index=False)
    f = read_census(folder)
    rows = pd.DataFrame(fidelity_report(f, f.data)["rows"]).set_index(["attribute", "category"])
    wa_only = pd.DataFrame(fidelity_report(read_census(folder, states=["WA"]), f.data)["rows"])
    wa_only = wa_only.set_index(["attribute", "category"])
    for attr in ("income_band", "employment_status"):
        assert np.allclose(rows.loc[attr, "population_share"], wa_only.loc[attr, "population_share"], atol=1e-9)


# ----------------------------------------------------------------------------- real shared data

@pytest.fixture(scope="module")
def real(census_dir):
    """The 3.4 M shared records, read once for this module (with every code checked)."""
    return read_census(census_dir, dictionary=census_dir / "PUMS_Data_Dictionary_2023.csv", unknown_codes="error")


@pytest.fixture(scope="module")
def paper_sample(real):
    return sample_people(real, PAPER_N, PAPER_SEED)


def test_real_frame_totals(real):
    assert len(real) == 3_422_888 and int(real.data["PWGTP"].sum()) == 340_110_990
    assert int(real.data["narrow"].sum()) == 393_725 + 292_272


def test_real_paper_recipe_fidelity(real, paper_sample):
    r = fidelity_report(real, paper_sample)
    assert r["population_weight"] == 340_110_990 and r["n_sample"] == PAPER_N
    bad = {k: v for k, v in r["tvd"].items() if v > 0.03}
    assert not bad, f"TVD above 0.03: {bad}"


def test_real_paper_recipe_ca_tx_shares_and_flags(real, paper_sample):
    d = real.data
    shares = state_shares(paper_sample)
    for postal, fips in (("CA", 6), ("TX", 48)):
        pop = d.loc[d["STATE"] == fips, "PWGTP"].sum() / d["PWGTP"].sum()
        assert pop == pytest.approx({"CA": 0.116, "TX": 0.092}[postal], abs=0.001)
        se = np.sqrt(pop * (1 - pop) / PAPER_N)      # simple random sampling tolerance
        assert abs(shares[postal] - pop) < 3 * se
    narrow = paper_sample["STATE"].isin([6, 48]).to_numpy()
    assert (paper_sample["narrow"].to_numpy() == narrow).all()
    assert paper_sample.loc[narrow, "donor_id"].notna().all()
    labelled = label_people(paper_sample, real.dictionary)
    assert all(len(f) == 14 for f in labelled.loc[narrow, "imputed_fields"])
    assert all(f == [] for f in labelled.loc[~narrow, "imputed_fields"])
    # donors come from the recipient's division for nearly everyone
    donors = labelled.loc[narrow, "code_DONOR"].str[:13]
    donor_state = d.loc[d["SERIALNO"].isin(donors), ["SERIALNO", "STATE"]].groupby("SERIALNO")["STATE"].first()
    same = [_division(st) == _division(donor_state[dn]) for st, dn in zip(paper_sample.loc[narrow, "STATE"], donors)]
    assert np.mean(same) > 0.95


def test_real_labels_and_determinism(real, paper_sample):
    labelled = label_people(paper_sample, real.dictionary)
    assert len(labelled) == PAPER_N and labelled["source_serialno"].str.match(r"^2024(HU|GQ)\d{7}$").all()
    text = labelled.drop(columns=[c for c in labelled.columns if c.startswith("code_")])
    assert not text.astype(str).apply(lambda c: c.str.contains("Unknown code")).any().any()
    assert set(labelled["state"]) <= {v[1] for v in STATES.values()}
    again = sample_people(real, PAPER_N, PAPER_SEED)      # other seeds differ: see the synthetic tests
    pd.testing.assert_frame_equal(label_people(again, real.dictionary), labelled)


def test_real_draw_more(real, paper_sample):
    more = draw_more(real, 25, PAPER_SEED, 1, paper_sample["person_id"])
    assert len(more) == 25 and not set(more["person_id"]) & set(paper_sample["person_id"])
    assert more.loc[more["narrow"], list(WIDE)].notna().any(axis=1).all()


def test_two_way_tvd_on_a_hand_made_frame():
    # four people (weights 1, 1, 2, 4) and a sample of the first boy and the old woman:
    # joint sex x age population (M,0-17) 1/8, (M,30-44) 1/8, (F,0-17) 2/8, (F,65+) 4/8; sample 1/2, 1/2
    from generation.census.readers import CensusFrame
    people = pd.DataFrame({"SERIALNO": ["a", "b", "c", "d"], "SPORDER": [1, 1, 1, 1], "SEX": [1, 1, 2, 2],
                           "AGEP": [10, 40, 10, 70], "PWGTP": [1, 1, 2, 4], "RAC1P": 1, "HISP": 1, "SCHL": 16,
                           "STATE": 53, "PINCP": 0, "ESR": 1, "CIT": 1, "DIS": 2, "narrow": False})
    r = fidelity_report(CensusFrame(people, None, []), people.iloc[[0, 3]])
    two_way = {tuple(p["attributes"]): p["tvd"] for p in r["tvd_2way"]}
    assert len(two_way) == len(FIDELITY) * (len(FIDELITY) - 1) // 2
    assert two_way[("sex", "age_band")] == pytest.approx(0.375)   # 0.5 * (3/8 + 1/8 + 2/8 + 0)
    assert r["tvd"]["sex"] == pytest.approx(0.25) and r["tvd"]["age_band"] == pytest.approx(0.125)
    assert two_way[("sex", "region")] == pytest.approx(0.25)      # one region: the joint is the sex marginal


def test_two_way_population_sums_to_the_marginals_with_narrow_files(frame):
    # CA/TX people lack income and employment: their joint shares come from donor cells, and must
    # still add up to the one-way shares (both orders, one or both attributes imputed)
    from generation.sampling import _eligible, _population_counts
    rows = _eligible(frame, 0, None)
    for a, b in [("age_band", "income_band"), ("income_band", "sex"), ("income_band", "employment_status")]:
        joint, expected = _population_counts(frame, rows, [a, b])
        assert expected
        joint = joint.reshape(len(FIDELITY[a][0]), len(FIDELITY[b][0]))
        assert np.allclose(joint.sum(axis=1), _population_counts(frame, rows, [a])[0])
        assert np.allclose(joint.sum(axis=0), _population_counts(frame, rows, [b])[0])
