"""The command line refuses what it cannot use before anything runs (fire alone would run the command
first and fail on the leftover arguments after an upload or a build)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from builder.cli import main
from tests.hub_server import HubServer
from tests.test_publish import REPO, TOKEN
from tests.test_publish import build as build_folder

from . import faults
from .helpers import ROOT, one_line_error, recipe_text


def persona(*args, cwd=ROOT, **extra_env) -> subprocess.CompletedProcess:
    """`persona ARGS` in a fresh process, with no Hugging Face settings but EXTRA_ENV."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "PERSONA_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra_env})
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`persona ARGS` through main() here: for command lines refused (or helped) before any command runs."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture
def hub_and_build(tmp_path):
    """A local Hub and a built folder: (hub, folder, the environment that points persona at that Hub)."""
    hub = HubServer(token=TOKEN).start()
    try:
        folder = tmp_path / "built"
        build_folder(folder, seed=1)
        yield hub, folder, {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": tmp_path / "hf"}
    finally:
        hub.stop()


def test_mistyped_publish_flag_sends_nothing(hub_and_build):
    hub, folder, hub_env = hub_and_build
    line = one_line_error(persona("publish", folder, "--repo", REPO, "--version", "v1.0.0", "--dryrun", **hub_env))
    assert line == "persona: error: unknown flag --dryrun for `persona publish` (did you mean --dry-run?)"
    line = one_line_error(persona("publish", folder, "--repo", REPO, "--version", "v1.0.0", "--privat", **hub_env))
    assert line.endswith("unknown flag --privat for `persona publish` (did you mean --private?)")
    assert hub.state.requests == [] and REPO not in hub.state.repos  # no commit, no tag, not even a read

    # the same server sees a publish spelled right: positional path and repo, --flag=value, --no-flag
    dry = persona("publish", folder, REPO, "--version=v1.0.0", "--dry_run", **hub_env)
    assert dry.returncode == 0 and "nothing sent" in dry.stdout, dry.stderr[-2000:]
    assert hub.state.requests == []
    real = persona("publish", "--path", folder, "--repo", REPO, "--version", "v1.0.0", "--no-dry-run", **hub_env)
    assert real.returncode == 0, real.stderr[-2000:]
    assert list(hub.state.repos[REPO].tags) == ["v1.0.0"]


def test_unknown_build_flag_creates_nothing(tmp_path):
    # a recipe that would build into this folder (output.dir and the work folder default to the cwd)
    (tmp_path / "recipe.toml").write_text(recipe_text(tmp_path / "model", census=str(tmp_path / "census")))
    line = one_line_error(persona("build", "--recipe", "recipe.toml", "--outdir", "X", cwd=tmp_path))
    assert line == "persona: error: unknown flag --outdir for `persona build` (did you mean --out?)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # no work folder, no output folder


@pytest.mark.parametrize("args, expected", [
    (["verify", "a", "b", "c", "d"], "unexpected argument 'd' for `persona verify` (positional arguments: "
                                     "PATH REPO REVISION; flags start with --)"),
    (["build", "configs/cpu.toml", "-", "verify"], "unexpected argument '-' for `persona build`"),
    (["bild"], "unknown command bild (did you mean build?); see persona --help"),
    (["verify", "/no/such/build"], "/no/such/build: no such folder (build one with `persona build`)"),
    (["frobnicate"], "unknown command frobnicate; see persona --help"),
    (["--recipe", "x", "build"], "expected a command (build, serve, plan, prepare-model, verify, publish, eval, versions) "
                                 "before --recipe"),
    (["build", "--out", "a", "--out=b"], "--out given twice for `persona build`"),
    (["build", "--out", "a", "-o", "b"], "--out given twice for `persona build`"),
    (["publish", "--dry-run", "--no-dry-run"], "--dry-run given twice for `persona publish`"),
    (["verify", "a", "--path", "b"], "--path given twice for `persona verify` (also as the argument 'a')"),
    (["versions"], "`persona versions` needs --repo REPO"),
    (["publish", "--version"], "--version for `persona publish` needs a value"),
    (["publish", "--dry-run=maybe"], "--dry-run for `persona publish` is true or false, not 'maybe'"),
    (["eval", "--pairs", "all"], "--pairs for `persona eval` takes an integer, not 'all'"),
    (["eval", "--top-p", "high"], "--top-p for `persona eval` takes a number, not 'high'"),
    (["eval", "-p", "3"], "-p for `persona eval` is ambiguous: --pairs, --personas, --probe-personas, "
                          "--probe-questions, --probe-mode"),
    (["publish", "--no-dryrun"], "unknown flag --no-dryrun for `persona publish` (did you mean --no-dry-run?)"),
    (["build", "--", "--trace"], "unknown flag --trace after --"),
    (["--help", "build"], "unexpected build after --help (for one command: persona COMMAND --help)"),
    # booleans are flags only: a positional value never lands on one (fire would take `true`, `yes`, `0` ...)
    (["publish", "d", "org/n", "v1.0.0", "true"], "unexpected argument 'true' for `persona publish`: --private "
                                                  "is a flag (--private, --no-private or --private=false), never a "
                                                  "positional value"),
    (["publish", "d", "org/n", "v1.0.0", "yes"], "unexpected argument 'yes' for `persona publish`: --private "
                                                 "is a flag (--private, --no-private or --private=false), never a "
                                                 "positional value"),
    (["build", "r", "o", "w", "ray", "auto", "2", "0"], "unexpected argument '0' for `persona build`: --verbose "
                                                        "is a flag (--verbose, --no-verbose or --verbose=false), "
                                                        "never a positional value"),
    (["publish", "d", "--private", "yes"], "--private for `persona publish` is true or false, not 'yes'"),
    (["publish", "d", "o/n", "v1.0.0", "x"], "unexpected argument 'x' for `persona publish`: --private is a flag "
                                             "(--private, --no-private or --private=false), never a positional value"),
    # numbers as a person writes them, in range; not what Python's int() / float() also accept
    (["eval", "--max-model-len", "1e3"], "--max-model-len for `persona eval` takes an integer, not '1e3'"),
    (["eval", "--seed", "1_000"], "--seed for `persona eval` takes an integer, not '1_000'"),
    (["eval", "--max-tokens", "0x10"], "--max-tokens for `persona eval` takes an integer, not '0x10'"),
    (["eval", "--pairs", "-1"], "--pairs for `persona eval` must be >= 0 (0: all), not -1"),
    (["eval", "--seed=-5"], "--seed for `persona eval` must be in [0, 2**63), not -5"),
    (["eval", "--seed", "9" * 40], f"--seed for `persona eval` takes an integer, not '{'9' * 40}'"),
    (["eval", "--top-p", "nan"], "--top-p for `persona eval` takes a number, not 'nan'"),
    (["eval", "--temperature", "inf"], "--temperature for `persona eval` takes a number, not 'inf'"),
    (["eval", "--temperature", "1e999"], "--temperature for `persona eval` takes a number, not '1e999'"),
    (["eval", "--top-p", "1.5"], "--top-p for `persona eval` must be in (0, 1], not 1.5"),
    (["eval", "--kv-cache-gib", "0"], "--kv-cache-gib for `persona eval` must be > 0, not 0"),
    (["eval", "--personas", "0"], "--personas for `persona eval` must be >= 1, not 0"),
    (["plan", "--tokens-per-s", "-5"], "--tokens-per-s for `persona plan` must be > 0, not -5"),
    (["plan", "--tokens-per-s", "NaN"], "--tokens-per-s for `persona plan` takes a number, not 'NaN'"),
    (["build", "--replicas", "0"], "--replicas for `persona build` must be >= 1, not 0"),
])
def test_refused_before_running(capsys, args, expected):
    assert one_line_error(in_process(capsys, *args)) == f"persona: error: {expected}"


def test_every_numeric_flag_has_a_range():
    """A new int or float parameter must say its range (RANGES) before the command line takes it."""
    from builder.cli import COMMANDS, RANGES, _kind, _params

    numeric = {p.name for fn in COMMANDS.values() for p in _params(fn)
               if p.kind is not p.VAR_POSITIONAL and _kind(fn, p.name) in (int, float)}
    assert numeric == set(RANGES)


def test_positional_booleans_send_nothing(hub_and_build):
    """`persona publish DIR ORG/NAME v1.0.0 true` once made a real upload and tag, in a public repo."""
    hub, folder, hub_env = hub_and_build
    for extra in (["true"], ["false", "true"], ["0", "1"], ["yes"]):
        line = one_line_error(persona("publish", folder, REPO, "v1.0.0", *extra, **hub_env))
        assert line.startswith(f"persona: error: unexpected argument {extra[0]!r} for `persona publish`: "
                               "--private is a flag")
    assert hub.state.requests == [] and REPO not in hub.state.repos  # not even a read


def test_help_lists_commands_and_flags_without_running(capsys):
    top = persona("--help")
    assert top.returncode == 0 and top.stderr == "", top.stderr
    assert top.stdout.startswith("usage: persona COMMAND")
    for command in ("build", "eval", "prepare-model", "publish", "verify", "versions"):
        assert f"\n  {command} " in top.stdout
    assert in_process(capsys, "-h").stdout == top.stdout == in_process(capsys, "--", "--help").stdout

    one = persona("publish", "--repo", "org/x", "--version", "v1.0.0", "--help")  # help wins: nothing runs
    assert one.returncode == 0 and one.stderr == "", one.stderr
    assert one.stdout.startswith("usage: persona publish [PATH] [--FLAGS]\n")
    assert "\n  --dry-run, --no-dry-run  default: no\n" in one.stdout
    assert "\n  --path PATH              default: persona\n" in one.stdout
    assert in_process(capsys, "eval", "-h").stdout.startswith("usage: persona eval [MORE_REPORTS...] [--FLAGS]")


def test_debug_shows_the_traceback_of_a_known_error(tmp_path):
    args = ("publish", tmp_path, "--repo", "org/x", "--version", "1.0")  # PublishError: not a semantic version
    line = one_line_error(persona(*args))
    assert line == "persona: error: version '1.0' is not a semantic version like v1.2.3"
    p = persona(*args, "--debug")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == line
    assert "Traceback (most recent call last)" in p.stderr and "builder/publish.py" in p.stderr

    line = one_line_error(persona("publish", "--repo", "org/x"))  # refused by the command itself
    assert line == "persona: error: `persona publish` needs --repo ORG/NAME and --version vX.Y.Z"
    for p in (persona("--debug", "publish", "--repo", "org/x"), persona("publish", "--repo", "org/x", PERSONA_DEBUG="1")):
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == line
        assert "Traceback (most recent call last)" in p.stderr and "builder/cli.py" in p.stderr


def test_values_reach_the_command_as_written(tmp_path):
    """Strings stay strings (fire alone reads `1.0` as a float), *args reach eval --compare."""
    line = one_line_error(persona("eval", "--compare", tmp_path / "a", tmp_path / "b"))
    assert line.startswith(f"persona: error: {tmp_path / 'a'}: cannot read an evaluation report")
    (tmp_path / "file").write_text("")
    line = one_line_error(persona("verify", tmp_path / "file"))
    assert line == f"persona: error: {tmp_path / 'file'} is a file, not a built dataset folder"


def test_user_errors_below_the_cli_are_persona_errors(tmp_path, monkeypatch):
    """main() prints only PersonaErrors as one line (no more catch-all ValueError / OSError)."""
    import pyarrow as pa
    from datasets import Features

    from builder.backends import with_executor
    from builder.recipe import load_recipe
    from builder.shards import write_config
    from generation.errors import PersonaError

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tmp_path))  # (a model path that exists)
    with pytest.raises(PersonaError, match="--executor 'spark' is not 'local'"):
        with_executor(load_recipe(recipe), "spark")
    with pytest.raises(PersonaError, match="--replicas: the Ray actor pool is retired"):
        with_executor(load_recipe(recipe), replicas=0)

    faults.install(monkeypatch.setattr, "enospc_shard")  # the disk fills while a shard is written
    table = pa.table({"a": [1, 2]})
    with pytest.raises(PersonaError) as e:
        write_config(tmp_path / "out", "c", "train", table, Features.from_arrow_schema(table.schema))
    assert isinstance(e.value, OSError) and e.value.filename == str(tmp_path / "out" / "c" / "train-00000.parquet.tmp")
    assert "No space left on device" in str(e.value) and not list((tmp_path / "out" / "c").iterdir())


def test_publish_holds_the_output_lock_from_verify_to_tag(tmp_path, hub_and_build):
    """A build cannot swap another folder in while publish uploads the one it verified."""
    from builder import folders

    hub, folder, hub_env = hub_and_build
    lock = folders.output_lock(folder)
    with folders.exclusive(lock, "a build"):  # a build holds the folder: publish waits for nothing, sends nothing
        line = one_line_error(persona("publish", folder, "--repo", REPO, "--version", "v1.0.0", **hub_env))
    assert line == (f"persona: error: output folder {folder} is in use by another persona process "
                    f"(pid {os.getpid()}; lock {lock})")
    assert hub.state.requests == []

    # publish is uploading (the Hub holds its commit): a build of the same folder is refused, naming it
    hub.state.gate["commit"] = threading.Event()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "PERSONA_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **{k: str(v) for k, v in hub_env.items()}})
    publishing = subprocess.Popen([sys.executable, "-m", "builder.cli", "publish", str(folder), "--repo", REPO,
                                   "--version", "v1.0.0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "commit" not in hub.state.arrived and publishing.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "commit" in hub.state.arrived, publishing.communicate(timeout=60)
        (tmp_path / "recipe.toml").write_text(recipe_text(tmp_path))
        line = one_line_error(persona("build", "--recipe", "recipe.toml", "--out", folder, cwd=tmp_path))
        assert line.startswith(f"persona: error: output folder {folder} is in use by another persona process "
                               f"(pid {publishing.pid}; ")
    finally:
        hub.state.gate["commit"].set()
        out, err = publishing.communicate(timeout=120)
    assert publishing.returncode == 0, err[-3000:]
    assert list(hub.state.repos[REPO].tags) == ["v1.0.0"]


def test_hub_file_names_cannot_drive_the_terminal(tmp_path, hub_and_build):
    """Names from a Hub listing are printed escaped (a bidi override, a C1 CSI); one with ESC is refused."""
    from tests.test_publish import put_build

    hub, folder, hub_env = hub_and_build
    hub_env = {k: v for k, v in hub_env.items() if k != "HF_TOKEN"}  # reads as anyone would
    put_build(hub, folder, "v1.0.0")
    hub.state.put(REPO, {"notes/\u202etxt.exe\x9b2J": b"x"}, tag="v1.1.0")
    p = persona("verify", "--repo", REPO, "--revision", "v1.1.0", **hub_env)
    assert p.returncode == 1 and p.stdout == "  extra: notes/\\u202etxt.exe\\x9b2J (1 bytes, not in manifest)\n", p.stdout + p.stderr[-3000:]
    assert p.stderr == f"verify: {REPO}@v1.1.0: 1 problem(s)\n"

    hub.state.put(REPO, {"\x1b[2J\x1b[31mREADME.md": b"x"}, tag="v1.2.0")
    line = one_line_error(persona("verify", "--repo", REPO, "--revision", "v1.2.0", **hub_env))
    assert line == ("persona: error: listing files failed: the Hub answered path '\\x1b[2J\\x1b[31mREADME.md', "
                    "not a relative file path")
