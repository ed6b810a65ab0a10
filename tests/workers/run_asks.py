"""Answer N synthetic asks through the real StoreRunner + vLLM engine; write {key: [ok, text]} as JSON.

usage: run_asks.py RECIPE STORE N OUT [schema|plain|never]
"""
import json
import sys

from builder.backends import local_backend, resolve_revisions
from builder.recipe import load_recipe
from builder.runner import RunnerConfig, StoreRunner
from builder.store import RequestStore
from generation.flow import Ask

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def main(recipe_path, store_path, n, out, mode="plain"):
    recipe = load_recipe(recipe_path)
    store = RequestStore(store_path)
    before = store.count()
    runner = StoreRunner(RunnerConfig.from_recipe(recipe), store, local_backend, resolve_revisions(recipe))
    asks = [Ask(key=f"q{i}", messages=[{"role": "system", "content": f"You are persona number {i // 8}."},
                                       {"role": "user", "content": f"Say something about the number {i}."}],
                schema=SCHEMA if mode == "schema" else None) for i in range(int(n))]
    if mode == "schema":
        parse = json.loads
    elif mode == "never":
        def parse(text):
            raise ValueError("never: this parser accepts nothing")
    else:
        parse = None
    outcomes = runner(role="responder", asks=asks, parse=parse)
    json.dump({"before": before, "after": store.count(), "stats": runner.summary(),
               "results": {k: [o.ok, o.text, o.attempts, o.reason] for k, o in outcomes.items()}},
              open(out, "w"), sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
