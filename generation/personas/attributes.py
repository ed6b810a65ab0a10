"""The paper's 33 persona attributes, the output columns, and the closed vocabularies the rules and the
filler's schemas use."""
from generation.census import STATES

# The paper's 33 attributes (Appendix A), in the paper's order.
ATTRIBUTES = [
    "age", "sex", "race", "ancestry", "household_language", "education", "employment_status",
    "class_of_worker", "industry_category", "occupation_category", "detailed_job_description", "income",
    "marital_status", "household_type", "family_presence_and_age", "place_of_birth", "citizenship",
    "veteran_status", "disability", "health_insurance", "big_five_scores", "defining_quirks", "mannerisms",
    "personal_time", "lifestyle", "ideology", "political_views", "religion", "cognitive_difficulty",
    "ability_to_speak_english", "vision_difficulty", "fertility", "hearing_difficulty",
]
PROCEDURAL_ATTRIBUTES = ["big_five_scores", "defining_quirks", "mannerisms"]
LLM_ATTRIBUTES = ["detailed_job_description", "personal_time", "lifestyle", "ideology", "political_views", "religion"]
CENSUS_ATTRIBUTES = [a for a in ATTRIBUTES if a not in PROCEDURAL_ATTRIBUTES + LLM_ATTRIBUTES]
OUTPUT_COLUMNS = (["persona_id", "source_serialno", "source_sporder"] + ATTRIBUTES
                  + ["state", "core_values", "imputed_fields", "generated_fields", "persona", "replacement_round"])

# ---------------------------------------------------------------- closed vocabularies

NOT_APPLICABLE_MINOR = "Not applicable (minor)"
IDEOLOGIES = ["Progressive", "Liberal", "Moderate", "Conservative", "Libertarian", "Socialist", "Populist",
              "Apolitical"]
POLITICAL_VIEWS = ["Democrat", "Republican", "Independent", "Libertarian Party", "Green Party", "Other party",
                   "No party preference"]
RELIGIONS = ["Protestant", "Catholic", "Mormon", "Orthodox Christian", "Jehovah's Witness", "Other Christian",
             "Jewish", "Muslim", "Buddhist", "Hindu", "Sikh", "Other religion", "Atheist", "Agnostic",
             "Nothing in particular"]
# PUMS HHT2 labels (household/family type incl. cohabiting), plus group quarters, which HHT2 leaves N/A
# (same wording as generation.census uses for the household fields of people in group quarters).
GROUP_QUARTERS = "Not applicable (lives in group quarters)"
HOUSEHOLD_TYPES = [
    "Married couple household with children of the householder less than 18",
    "Married couple household, no children of the householder less than 18",
    "Cohabiting couple household with children of the householder less than 18",
    "Cohabiting couple household, no children of the householder less than 18",
    "Female householder, no spouse/partner present, living alone",
    "Female householder, no spouse/partner present, with children of the householder less than 18",
    "Female householder, no spouse/partner present, with relatives, no children of the householder less than 18",
    "Female householder, no spouse/partner present, only nonrelatives present",
    "Male householder, no spouse/partner present, living alone",
    "Male householder, no spouse/partner present, with children of the householder less than 18",
    "Male householder, no spouse/partner present, with relatives, no children of the householder less than 18",
    "Male householder, no spouse/partner present, only nonrelatives present",
    GROUP_QUARTERS,
]
# PUMS FPARC labels ("family presence and age of related children"), plus its N/A cases: no family in a
# housing unit (alone or only with non-relatives), and group quarters.
NOT_IN_FAMILY = "Not in a family"
FAMILY_PRESENCE = ["With related children under 5 years only", "With related children 5 to 17 years only",
                   "With related children under 5 years and 5 to 17 years", "No related children", NOT_IN_FAMILY,
                   GROUP_QUARTERS]
# PUMS POBP labels for the 50 states + DC without the "/XX" suffix (as generation.census writes them),
# and for the territories.
_STATES_AB = [(name, postal) for postal, name, _, _ in STATES.values()]   # FIPS order = name order
US_STATES = [name for name, _ in _STATES_AB]
US_TERRITORIES = ["Puerto Rico", "Guam", "US Virgin Islands", "American Samoa",
                  "Commonwealth of the Northern Mariana Islands"]

# ---------------------------------------------------------------- other countries
# A persona row from a non-US census source carries `country` (and `state` holds the UK nation); a row
# without it is a US (ACS PUMS) persona, so US builds read exactly as before.
US = "United States"
# The parties a persona_filler may pick, per UK nation (each has its own party system).
UK_PARTIES = {
    "Northern Ireland": ["Sinn Féin", "Democratic Unionist Party", "Alliance Party", "Ulster Unionist Party",
                         "SDLP", "Traditional Unionist Voice", "Green Party", "People Before Profit",
                         "Other party", "No party preference"],
    "Scotland": ["Scottish National Party", "Scottish Labour", "Scottish Conservatives", "Scottish Liberal Democrats",
                 "Scottish Greens", "Alba Party", "Reform UK", "Other party", "No party preference"],
    "England and Wales": ["Labour", "Conservative", "Liberal Democrats", "Reform UK", "Green Party", "Plaid Cymru",
                          "Other party", "No party preference"],
}
