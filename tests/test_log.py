"""Where other libraries' output goes (generation/log.py), without a model: vLLM's logger, Python warnings."""
import textwrap

from .helpers import run_py

SCRIPT = textwrap.dedent("""
    import logging, sys, warnings
    from pathlib import Path
    from generation.log import log, route_library_logs, show_library_output
    path = None if sys.argv[1] == "-" else Path(sys.argv[1])
    route_library_logs(path)
    logging.getLogger("vllm.engine").info("engine line")
    logging.getLogger("vllm.engine").warning("engine warning")
    warnings.warn("a library's warning")
    log.info("persona line")
    print(show_library_output())
""")


def test_library_lines_go_to_the_log_file_and_persona_lines_to_stderr(tmp_path):
    path = tmp_path / "work" / "vllm.log"
    p = run_py(["-c", SCRIPT, path], timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "False"
    assert p.stderr.strip().splitlines() == ["[persona] persona line"]
    text = path.read_text()
    assert "INFO" in text and "[vllm.engine] engine line" in text and "[vllm.engine] engine warning" in text
    assert "[py.warnings]" in text and "a library's warning" in text
    run_py(["-c", SCRIPT, path], timeout=120)  # a second build appends
    assert path.read_text().count("engine line") == 2


def test_verbose_shows_library_lines_on_stderr(tmp_path):
    p = run_py(["-c", SCRIPT, "-"], timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "True"
    assert "[vllm.engine] engine line" in p.stderr and "a library's warning" in p.stderr
    assert "[persona] persona line" in p.stderr
    assert not list(tmp_path.iterdir())


def test_summary_paths_are_relative_inside_the_current_folder(tmp_path, monkeypatch):
    from builder.pipeline import _shown
    monkeypatch.chdir(tmp_path)
    assert _shown(tmp_path / "persona") == "persona"
    assert _shown(tmp_path / ".persona-work" / "test" / "vllm.log") == ".persona-work/test/vllm.log"
    outside = tmp_path.parent / "elsewhere" / "persona"
    assert _shown(outside) == str(outside)


BARS = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    os.environ.pop("TQDM_DISABLE")  # tests/helpers.env() turns tqdm off; these bars are what is tested
    from tqdm.auto import tqdm
    from transformers.utils import logging as transformers_logging
    from generation.log import library_stderr, log, route_library_logs
    path = None if sys.argv[1] == "-" else Path(sys.argv[1])
    route_library_logs(path)
    log.info("persona line")
    with library_stderr():  # the two bars prepare-model's GGUF conversion draws (transformers' own tqdm calls)
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in transformers_logging.tqdm(range(2), desc="Writing model shards"):
            pass
""")


def test_library_progress_bars_go_to_the_log_file_unless_verbose(tmp_path):
    path = tmp_path / "work" / "vllm.log"
    p = run_py(["-c", BARS, path], timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == ["[persona] persona line"]
    text = path.read_text()
    assert "Converting and de-quantizing GGUF tensors" in text and "Writing model shards" in text
    p = run_py(["-c", BARS, "-"], timeout=180)  # --verbose: shown as the libraries draw them
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Converting and de-quantizing GGUF tensors" in p.stderr and "Writing model shards" in p.stderr
