"""The dataset card (README.md) and fidelity plot, rendered from the manifest (a plain dict).

Every number in the card comes from the manifest, so the card cannot drift from the data. Manifest
keys read here: name, version, demo, fingerprint, seed, models, versions, sources, counts, rejects,
fidelity, lengths, splits, features, and optionally repo_id, license, pretty_name, description,
census_fidelity.basis. `files` is not read (the card is itself one of the files).

`fidelity` rows: {"attribute", "category", "population_share", "sample_share"}; an attribute's TVD is
computed from its rows (half the sum of absolute share differences).
"""
from __future__ import annotations

import io
from pathlib import Path
from string import Template

import yaml

TEMPLATE = Path(__file__).with_name("template.md")
DEFAULT_CONFIG = "preferences"
# What each config holds; only configs present in the manifest are described.
CONFIG_NOTES = {
    "preferences": "one row per persona × prompt pair: the persona, the question, the chosen and rejected "
                   "answers and the critique that led from one to the other. `test_seen` and `test_unseen` "
                   "are held out from `train`; the recipe in `manifest.json` defines exactly what each holds.",
    "dpo": "the same pairs as conversational prompt / chosen / rejected messages (persona in the system "
           "message), ready for DPO-style trainers.",
    "personas": "one row per persona: census attributes and the LLM-written profile.",
    "prompts": "the PRISM opening prompts kept, with their classification and split.",
    "rejects": "what a stage dropped (personas, prompts, pairs), with the step and reason.",
}
# The Hub's size_categories buckets, by number of examples.
SIZE_BUCKETS = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]


def render_card(manifest: dict, plot_path: str | None = None) -> str:
    """README.md text: YAML header (configs, dataset_info, ...) then prose. Same manifest, same text."""
    m = manifest
    splits = m["splits"]
    repo_id = m.get("repo_id") or f"<org>/{m['name']}"
    tvd = attribute_tvd(m["fidelity"])
    fields = {
        # sorted keys: the text must not depend on key order, which manifest.json (sorted) does not keep
        "header": yaml.safe_dump(card_header(m), sort_keys=True, allow_unicode=True, width=1000),
        "pretty_name": pretty_name(m),
        "demo_banner": demo_banner(m),
        "name": m["name"],
        "version_text": f"version `{m['version']}` " if m.get("version") else "",
        "description": f"{m['description'].strip()}\n\n" if m.get("description") else "",
        "fingerprint": m["fingerprint"],
        "seed": m["seed"],
        "contents_table": _rows(
            [config, split, _num(info["rows"]), _num(info["bytes"]), _num(len(info["files"]))]
            for config in ordered_configs(splits) for split, info in _ordered_splits(splits[config])),
        "config_notes": "\n".join(
            f"- `{config}`{' (default)' if config == DEFAULT_CONFIG else ''}: {CONFIG_NOTES.get(config, 'see `dataset_info` in the metadata header.')}"
            for config in ordered_configs(splits)),
        "models_table": _rows(
            [role, _model_link(spec.get("id", "")), f"`{spec.get('revision')}`", spec.get("dtype", ""),
             spec.get("license", "see model page")]
            for role, spec in sorted(m["models"].items())),
        "counts_table": _rows([key, _num(value)] for key, value in _flatten(m["counts"])),
        "rejects_table": _rows(
            [stage, reason, _num(count)]
            for stage, reasons in sorted(m["rejects"].items()) for reason, count in sorted(reasons.items())),
        "versions_table": _rows([pkg, v or "not installed"] for pkg, v in sorted(m["versions"].items())),
        "sources_table": _rows(
            [source, key, _cell(value)]
            for source, info in sorted(m["sources"].items())
            for key, value in (_flatten(info) if isinstance(info, dict) else [("", info)])),
        "plot": (f"![Population vs sample share per category]({plot_path})\n\n" if plot_path else ""),
        "fidelity_basis": _basis(m.get("census_fidelity", {}).get("basis", {})),
        "fidelity_table": _rows(
            [row["attribute"], row["category"], _share(row["population_share"]), _share(row["sample_share"]),
             _share(tvd[row["attribute"]])]
            for row in m["fidelity"]),
        "lengths_table": _rows([key, _num(value)] for key, value in _flatten(m["lengths"])),
        "local_path": m["name"],
        "preference_splits": ", ".join(s for s, _ in _ordered_splits(splits.get(DEFAULT_CONFIG, {}))),
        "repo_id": repo_id,
        "revision": m.get("version") or "vX.Y.Z",
        "license": m.get("license", "cc-by-4.0"),
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(fields)


def card_header(m: dict) -> dict:
    """The YAML metadata the Hub reads: licence, tags, configs (data_files) and dataset_info per config."""
    splits = m["splits"]
    configs, infos = [], []
    for config in ordered_configs(splits):
        ordered = _ordered_splits(splits[config])
        entry = {"config_name": config}
        if config == DEFAULT_CONFIG:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"{config}/{s}-*.parquet"} for s, _ in ordered]
        configs.append(entry)
        infos.append({
            "config_name": config,
            "features": m["features"][config],  # already in the Hub's YAML list form
            "splits": [{"name": s, "num_bytes": info["num_bytes"], "num_examples": info["rows"]}
                       for s, info in ordered],
            "download_size": sum(info["bytes"] for _, info in ordered),
            "dataset_size": sum(info["num_bytes"] for _, info in ordered),
        })
    largest = max((sum(i["rows"] for i in s.values()) for s in splits.values()), default=0)
    tags = ["synthetic", "personas", "preference", "dpo", "pluralistic-alignment", "census"]
    if m.get("demo"):
        tags.append("demo")
    return {
        "pretty_name": pretty_name(m),
        "license": m.get("license", "cc-by-4.0"),
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [size_category(largest)],
        "configs": configs,
        "dataset_info": infos,
    }


def pretty_name(m: dict) -> str:
    return m.get("pretty_name") or "PERSONA (open rebuild)" + (" - demo build" if m.get("demo") else "")


def demo_banner(m: dict) -> str:
    if not m.get("demo"):
        return ""
    models = ", ".join(sorted({spec["id"] for spec in m["models"].values() if spec.get("id")}))
    return (f"> **Demonstration build.** Generated with small demonstration model(s) ({models}) to show the\n"
            "> pipeline end to end. The text is not research-grade data: do not train or evaluate on it.\n\n")


def size_category(n: int) -> str:
    for limit, label in SIZE_BUCKETS:
        if n < limit:
            return label
    return "n>1B"


def ordered_configs(splits: dict) -> list[str]:
    """The default config first, then the rest by name (the Hub shows them in this order)."""
    return sorted(splits, key=lambda c: (c != DEFAULT_CONFIG, c))


def attribute_tvd(fidelity: list[dict]) -> dict[str, float]:
    """Total variation distance per attribute: half the sum of |population share - sample share|."""
    tvd: dict[str, float] = {}
    for row in fidelity:
        diff = abs(row["population_share"] - row["sample_share"])
        tvd[row["attribute"]] = tvd.get(row["attribute"], 0.0) + diff / 2
    return tvd


def plot_fidelity(fidelity_rows: list[dict], path) -> Path:
    """Scatter of population vs sample share per category, one colour per attribute, PNG.

    Deterministic bytes: a fresh Agg figure under matplotlib's default style, and no PNG metadata
    (matplotlib would otherwise write its version as `Software`)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tvd = attribute_tvd(fidelity_rows)
    attributes = list(dict.fromkeys(row["attribute"] for row in fidelity_rows))  # first-seen order
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7, 6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        top = max([r["population_share"] for r in fidelity_rows] + [r["sample_share"] for r in fidelity_rows])
        ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="sample = population")
        colors = matplotlib.colormaps["tab20"]  # 20 distinct colours; the default cycle repeats after 10
        for i, attribute in enumerate(attributes):
            rows = [r for r in fidelity_rows if r["attribute"] == attribute]
            ax.scatter([r["population_share"] for r in rows], [r["sample_share"] for r in rows], s=18,
                       color=colors(i % 20), label=f"{attribute} (TVD {_share(tvd[attribute])})")
        ax.set_xlabel("population share (census, weighted)")
        ax.set_ylabel("sample share (personas)")
        ax.set_title("Census fidelity of the persona sample")
        ax.legend(fontsize="small", loc="upper left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


def _basis(basis: dict) -> str:
    if not basis:
        return ""
    lines = [f"- `{attribute}`: {how}" for attribute, how in sorted(basis.items())]
    return "Population shares come from:\n\n" + "\n".join(lines) + "\n"


def _ordered_splits(config_splits: dict) -> list[tuple[str, dict]]:
    return sorted(config_splits.items(), key=lambda kv: (kv[0] != "train", kv[0]))  # train, then by name


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> sorted [("a.b", value)] for key/value tables."""
    out = []
    for key, value in sorted(d.items()):
        name = f"{prefix}{key}"
        out += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return out


def _rows(rows) -> str:
    lines = ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) if lines else "| (none) |"


def _num(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _cell(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:,.4f}"


def _share(x: float) -> str:
    return f"{x:.4f}"


def _cell(x) -> str:
    return "" if x is None else str(x).replace("\n", " ")


def _model_link(model_id: str) -> str:
    # Hub ids ("org/name") link to their page; anything else is shown as is.
    if model_id.count("/") == 1 and not model_id.startswith(("/", ".")):
        return f"[{model_id}](https://huggingface.co/{model_id})"
    return model_id
