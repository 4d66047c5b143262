"""Comparisons of several settings of one problem (``constrain compare``).

An *entry* is one setting to compare: a controller name with optional per-entry settings
(``"nupi(kp=1,ki=0.1,nu=0,lr=1)"``), or, from a YAML/JSON file, a controller mapping or a
partial run configuration. Every entry runs once per seed; the comparison keeps each run's
summary, aggregates them per entry (mean, standard deviation, min, max over the seeds) and
writes a report folder:

* ``compare.json``: the problem, the seeds, every entry's configuration and aggregates and
  every run's summary (late-window keys are named ``late_*``, see
  :meth:`constrain.History.late_summary`);
* ``compare.md``: the table and links to the figures and to every run's folder;
* ``compare.png`` (see :func:`constrain.plots.compare_figure`) plus the problem's own
  comparison figures (:meth:`constrain.ProblemSpec.compare_figures`);
* one folder per entry (one sub-folder per seed with several seeds) with the run reports.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ._errors import ConfigError
from ._io import atomic_write_text, strict_json_dumps
from .config import RunConfig, apply_overrides, parse_override
from .history import LATE_FRACTION, History
from .loggers import TensorBoardLogger
from .runner import ProblemSpec, run

__all__ = [
    "COLUMNS",
    "Comparison",
    "Entry",
    "EntryResult",
    "entry_configs",
    "load_entries",
    "parse_entries",
    "run_comparison",
    "write_comparison",
]

logger = logging.getLogger("constrain")

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("objective", "final objective", "objective at the last step"),
    ("max_violation", "final max viol.", "max violation at the last step (0: feasible)"),
    (
        "late_max_violation",
        "late max viol.",
        "largest max violation over the late window (the last 10% of the steps)",
    ),
    ("late_mean_violation", "late mean viol.", "mean max violation over the late window"),
    ("multiplier_error", "mult. error", "||lambda - lambda*||_2 at the last step"),
    (
        "late_max_multiplier_error",
        "late max mult. err.",
        "largest ||lambda - lambda*||_2 over the late window",
    ),
    ("ms_per_step", "ms/step", "wall time per step"),
)
"""Table columns: key of the aggregated run figures, header, meaning."""

STUDY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("test_accuracy", "test acc", "test accuracy"),
    ("max_parity_gap", "parity gap", "test max parity gap max_g |rate_g - rate|"),
    ("unconstrained_test_accuracy", "uncons. acc", "test accuracy without constraints"),
    ("unconstrained_max_parity_gap", "uncons. gap", "test parity gap without constraints"),
    ("density", "density", "achieved density of the gated weights"),
    ("train_accuracy", "train acc", "training accuracy"),
)
"""Report fields of the studies, shown when present."""

_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Entry:
    """One setting of a comparison.

    Attributes:
        label: Name in tables, figures and folder names (unique within a comparison).
        controller: Controller name (``None``: the problem's default controller).
        overrides: ``KEY=VALUE`` overrides of this entry only (``controller.kp=1``,
            ``optimizer.lr=0.01``), applied after the global ``--set`` overrides.
        sections: A partial run configuration of this entry (from a YAML entry), merged
            into the base configuration before ``overrides``.
    """

    label: str
    controller: str | None = None
    overrides: tuple[str, ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)


def _split_top_level(text: str, what: str) -> list[str]:
    """Split at commas outside parentheses and brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{what}: unbalanced ')' in {text!r}.")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ConfigError(
            f"{what}: unbalanced '(' in {text!r}; close every 'name(key=value, ...)'."
        )
    parts.append("".join(current))
    return [p.strip() for p in parts]


_ENTRY = re.compile(r"^(?P<name>[A-Za-z_][\w.-]*)\s*(?:\((?P<args>.*)\))?$", re.DOTALL)


def _parse_entry(text: str) -> Entry:
    match = _ENTRY.match(text)
    if match is None:
        raise ConfigError(
            f"--controllers entry {text!r} is not NAME or NAME(key=value, ...); e.g. "
            "'gda(lr=0.1)' or 'nupi(kp=1,ki=0.1)'."
        )
    overrides = []
    args = match["args"]
    if args is not None and args.strip():
        for item in _split_top_level(args, f"--controllers entry {text!r}"):
            if "=" not in item:
                raise ConfigError(
                    f"--controllers entry {text!r}: {item!r} is not key=value; e.g. "
                    f"'{match['name']}(lr=0.1)'."
                )
            key, value = item.split("=", 1)
            key = key.strip()
            path = key if "." in key else f"controller.{key}"
            parse_override(f"{path}={value}")  # fails early on an empty key
            overrides.append(f"{path}={value.strip()}")
    label = re.sub(r"\s+", "", text) if args is not None else match["name"]
    return Entry(label=label, controller=match["name"], overrides=tuple(overrides))


def parse_entries(text: str) -> list[Entry]:
    """Entries from ``--controllers``: ``"gda,nupi"``, ``"gda(lr=0.1),nupi(kp=1,ki=0.1)"``
    or the path of a YAML/JSON file holding a list (see :func:`load_entries`).

    Inside the parentheses a plain key is a controller field (``kp=1`` is
    ``controller.kp=1``); a dotted key is any configuration key of that entry
    (``optimizer.lr=0.01``). Values are read as YAML, as with ``--set``. Duplicate labels
    get a suffix (``gda``, ``gda #2``).

    Raises:
        ConfigError: For an empty list, unbalanced parentheses or an item that is not
            ``key=value``.
    """
    stripped = text.strip()
    if stripped.endswith(_FILE_SUFFIXES) or (stripped and Path(stripped).is_file()):
        return load_entries(Path(stripped))
    items = [p for p in _split_top_level(stripped, "--controllers") if p]
    if not items:
        raise ConfigError("--controllers needs at least one name, e.g. --controllers gda,nupi")
    return _unique([_parse_entry(item) for item in items])


def load_entries(path: str | Path) -> list[Entry]:
    """Entries from a YAML (or JSON) file holding a list. Each item is one of:

    * a string: a controller name or ``NAME(key=value, ...)`` as on the command line;
    * a mapping with ``name``: a controller and its fields (``{name: nupi, kp: 1}``);
    * a mapping of run-configuration sections (``controller``, ``optimizer``,
      ``formulation``, ``problem``, ``order``, ...), a partial run configuration.

    A mapping may carry a ``label``.

    Raises:
        ConfigError: If the file is missing, unreadable, not a non-empty list, or an item
            is none of the above.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the --controllers file {str(path)!r}: {exc.strerror}."
        ) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--controllers file {str(path)!r} is not valid: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f"--controllers file {str(path)!r} must hold a non-empty list of entries (controller "
            f"names, controller mappings or partial run configurations); got "
            f"{type(data).__name__}."
        )
    entries = []
    sections = set(RunConfig.model_fields)
    for k, item in enumerate(data):
        where = f"--controllers file {str(path)!r}, item {k}"
        if isinstance(item, str):
            entries.append(_parse_entry(item.strip()))
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a string or a mapping; got {item!r}.")
        item = dict(item)
        label = item.pop("label", None)
        if "name" in item:
            name = item.pop("name")
            controller = {"name": name, **item}
            text_label = (
                f"{name}({','.join(f'{k}={v}' for k, v in item.items())})" if item else name
            )
            entries.append(
                Entry(
                    label=str(label or text_label),
                    controller=str(name),
                    sections={"controller": controller},
                )
            )
            continue
        unknown = sorted(set(item) - sections)
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {unknown}; a partial run configuration has keys from "
                f"{sorted(sections)} (and 'label'), a controller mapping has 'name'."
            )
        controller_section = item.get("controller")
        name = None
        if isinstance(controller_section, str):
            name = controller_section
        elif isinstance(controller_section, Mapping):
            name = controller_section.get("name")
        if label is None:
            label = name or f"entry {k + 1}"
        entries.append(Entry(label=str(label), controller=name, sections=item))
    return _unique(entries)


def _unique(entries: list[Entry]) -> list[Entry]:
    seen: dict[str, int] = {}
    out = []
    for entry in entries:
        count = seen.get(entry.label, 0) + 1
        seen[entry.label] = count
        if count > 1:
            entry = Entry(
                f"{entry.label} #{count}", entry.controller, entry.overrides, entry.sections
            )
        out.append(entry)
    return out


def _controller_fields(name: str) -> set[str]:
    from . import controllers

    return set(controllers.get(name).model_fields)


def _switch_controller(data: dict[str, Any], name: str, spec: ProblemSpec) -> None:
    current = data.get("controller") or {"name": "gda"}
    if current.get("name") != name:
        data["controller"] = {"name": name, **spec.controller_defaults.get(name, {})}


def _merge_sections(data: dict[str, Any], sections: Mapping[str, Any], spec: ProblemSpec) -> None:
    for key, value in sections.items():
        if key in ("problem", "controller", "formulation", "optimizer"):
            value = {"name": value} if isinstance(value, str) else dict(value)
            current = dict(data.get(key) or {})
            if key == "controller" and "name" in value:
                _switch_controller(data, value["name"], spec)
                current = dict(data["controller"])
            elif "name" in value and value["name"] != current.get("name"):
                current = {}
            data[key] = {**current, **value}
        else:
            data[key] = copy.deepcopy(value)


def entry_configs(
    spec: ProblemSpec,
    base: Mapping[str, Any],
    entries: Sequence[Entry],
    overrides: Sequence[str] = (),
) -> list[tuple[Entry, RunConfig]]:
    """One validated :class:`RunConfig` per entry.

    Order of application: ``base`` (the problem's default configuration or a config
    file); the entry's controller, with the problem's recommended hyperparameters for it;
    the global ``overrides``; the entry's ``sections``; the entry's own ``overrides``.

    A global ``controller.KEY=VALUE`` applies to the entries whose controller has the field
    ``KEY`` (a note names the entries it skips); it is an error if none has it.

    Raises:
        ConfigError: For ``controller.name`` among the global overrides, a global controller
            field that no entry's controller has, or an invalid configuration (naming the
            entry).
    """
    from . import controllers, formulations

    parsed = [(text, parse_override(text)[0]) for text in overrides]
    for text, path in parsed:
        if path[:2] == ["controller", "name"] or path == ["controller"]:
            raise ConfigError(
                f"--set {text} conflicts with --controllers: name the controllers in "
                "--controllers instead."
            )
    prepared: list[tuple[Entry, dict[str, Any]]] = []
    applied: dict[str, list[str]] = {text: [] for text, _ in parsed}
    skipped: dict[str, list[str]] = {text: [] for text, _ in parsed}
    for entry in entries:
        data = copy.deepcopy(dict(base))
        if entry.controller is not None:
            controllers.get(entry.controller)  # unknown names fail here, with suggestions
            _switch_controller(data, entry.controller, spec)
        name = str((data.get("controller") or {"name": "gda"}).get("name"))
        fields = _controller_fields(name)
        own = []
        for text, path in parsed:
            if path[0] == "controller" and len(path) >= 2 and path[1] not in fields:
                skipped[text].append(f"{entry.label} ({name} has no field {path[1]!r})")
                continue
            applied[text].append(entry.label)
            own.append(text)
        data = apply_overrides(data, own)
        _merge_sections(data, entry.sections, spec)
        data = apply_overrides(data, entry.overrides)
        prepared.append((entry, data))
    for text, path in parsed:
        if skipped[text] and not applied[text]:
            from ._components import field_owners

            owners = field_owners(controllers.CONTROLLERS, path[1])
            where = f"; {path[1]} belongs to controller(s) {', '.join(owners)}" if owners else ""
            raise ConfigError(
                f"--set {text} applies to no entry: {'; '.join(skipped[text])}{where}. Give "
                'per-entry settings instead, e.g. --controllers "gda(lr=0.1),nupi(kp=5)".'
            )
        if skipped[text]:
            logger.warning(
                "--set %s applies to %s only, not to %s",
                text,
                ", ".join(applied[text]),
                "; ".join(skipped[text]),
            )
    from .runner import check_optimizer

    out = []
    for entry, data in prepared:
        problem = data.get("problem")
        named = problem.get("name") if isinstance(problem, Mapping) else problem
        if named != spec.name:
            raise ConfigError(
                f"entry {entry.label!r} sets problem.name={named!r}; a comparison runs one "
                f"problem ({spec.name!r}). Compare settings of {spec.name!r} only."
            )
        try:
            config = RunConfig.parse(data)
            controllers.build_controllers(config.controller)
            formulations.build(config.formulation)
            check_optimizer(config.optimizer)
        except ConfigError as exc:
            raise ConfigError(f"entry {entry.label!r}: {exc}") from None
        out.append((entry, config))
    return out


def _slug(label: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_.")
    return slug or "entry"


def _numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numeric figures of a run summary that are aggregated over seeds."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    reference = summary.get("reference") or {}
    for key in ("multiplier_error", "primal_error"):
        if isinstance(reference.get(key), (int, float)):
            out[key] = float(reference[key])
    if isinstance(reference.get("objective"), (int, float)):
        out["reference_objective"] = float(reference["objective"])
    if "seconds_per_step" in out:
        out["ms_per_step"] = 1e3 * out["seconds_per_step"]
    return out


def _aggregate(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    numbers = [_numbers(s) for s in summaries]
    keys = [k for k in numbers[0] if all(k in n for n in numbers)] if numbers else []
    stats: dict[str, dict[str, float]] = {"mean": {}, "std": {}, "min": {}, "max": {}}
    for key in keys:
        values = np.array([n[key] for n in numbers], dtype=np.float64)
        stats["mean"][key] = float(values.mean())
        stats["std"][key] = float(values.std(ddof=1)) if values.size > 1 else 0.0
        stats["min"][key] = float(values.min())
        stats["max"][key] = float(values.max())
    return stats


@dataclass
class EntryResult:
    """The runs of one entry.

    Attributes:
        entry: The entry.
        config: Its configuration (with the first seed).
        folder: Its report folder, relative to the comparison's folder.
        seeds: The seeds run.
        summaries: One run summary per seed.
        histories: One history per seed.
    """

    entry: Entry
    config: RunConfig
    folder: str
    seeds: list[int]
    summaries: list[dict[str, Any]]
    histories: list[History]

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        """``{"mean": {...}, "std": {...}, "min": {...}, "max": {...}}`` over the seeds."""
        return _aggregate(self.summaries)


@dataclass
class Comparison:
    """The outcome of :func:`run_comparison`."""

    problem: str
    seeds: list[int]
    results: list[EntryResult]
    figures: list[str] = field(default_factory=list)

    def reference(self) -> dict[str, Any] | None:
        """The exact reference of the first run that has one (``None`` if none)."""
        for result in self.results:
            for summary in result.summaries:
                if summary.get("reference"):
                    return dict(summary["reference"])
        return None

    def to_dict(self) -> dict[str, Any]:
        """The content of ``compare.json``."""
        entries = []
        for r in self.results:
            stats = r.stats
            entries.append(
                {
                    "label": r.entry.label,
                    "folder": r.folder,
                    "controller_config": r.summaries[0].get("controller_config"),
                    "config": r.config.model_dump(mode="json"),
                    "seeds": r.seeds,
                    **stats,
                }
            )
        runs = [
            {"label": r.entry.label, "seed": seed, **summary}
            for r in self.results
            for seed, summary in zip(r.seeds, r.summaries, strict=True)
        ]
        steps = self.results[0].summaries[0].get("steps") if self.results else None
        return {
            "problem": self.problem,
            "steps": steps,
            "seeds": self.seeds,
            "late_fraction": LATE_FRACTION,
            "figure": self.figures[0] if self.figures else None,
            "figures": self.figures,
            "columns": {key: text for key, _, text in COLUMNS + STUDY_COLUMNS},
            "entries": entries,
            "runs": runs,
        }


def run_comparison(
    spec: ProblemSpec,
    configs: Sequence[tuple[Entry, RunConfig]],
    out: str | Path,
    *,
    seeds: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
    tensorboard: str | Path | None = None,
) -> Comparison:
    """Run every entry with ``seeds`` seeds (the config's seed, then the next ones).

    Each run writes its report (without figures) under ``out/<entry>`` (``out/<entry>/seed-S``
    with several seeds); ``overwrite`` replaces previous runs there (see
    :func:`constrain.run`). With ``tensorboard`` set, each run also writes TensorBoard event
    files into the same relative folder under it (``pip install constrain[tensorboard]``).

    Raises:
        ConfigError: If ``seeds < 1``.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}.")
    out = Path(out)
    results = []
    folders: set[str] = set()
    for entry, config in configs:
        folder = _slug(entry.label)
        while folder in folders:
            folder += "_"
        folders.add(folder)
        seed_list = [config.seed + k for k in range(seeds)]
        summaries, histories = [], []
        for seed in seed_list:
            run_config = config.model_copy(update={"seed": seed})
            part = Path(folder) if seeds == 1 else Path(folder) / f"seed-{seed}"
            logger.info("compare %s: entry %r, seed %d", spec.name, entry.label, seed)
            sinks: list[TensorBoardLogger] = []
            if tensorboard is not None:
                sinks.append(TensorBoardLogger(Path(tensorboard) / part))
            try:
                result = run(
                    run_config,
                    out=out / part,
                    progress=progress,
                    figures=False,
                    overwrite=overwrite,
                    loggers=sinks,
                )
            finally:
                for sink in sinks:
                    sink.close()
            summaries.append({"label": entry.label, **result.summary})
            histories.append(result.solver.history)
        results.append(EntryResult(entry, config, folder, seed_list, summaries, histories))
    return Comparison(spec.name, results[0].seeds if results else [], results)


def _cell(stats: Mapping[str, Mapping[str, float]], key: str, seeds: int) -> str:
    mean = stats["mean"].get(key)
    if mean is None or not math.isfinite(mean):
        return "-"
    fmt = ".4g" if key in {k for k, _, _ in STUDY_COLUMNS} else ".3g"
    if key == "ms_per_step":
        fmt = ".3f"
    if key == "objective":
        fmt = ".6g"
    text = format(mean, fmt)
    if seeds > 1:
        text += f" ± {format(stats['std'][key], '.2g')}"
    return text


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (mean ± standard deviation over seeds)."""
    stats = [r.stats for r in comparison.results]
    columns = [
        (key, header)
        for key, header, _ in COLUMNS + STUDY_COLUMNS
        if any(key in s["mean"] for s in stats)
    ]
    header = ["entry", *(h for _, h in columns)]
    seeds = len(comparison.seeds)
    rows = [
        [r.entry.label, *(_cell(s, key, seeds) for key, _ in columns)]
        for r, s in zip(comparison.results, stats, strict=True)
    ]
    return header, rows


def format_table(comparison: Comparison) -> str:
    """The comparison table as aligned plain text."""
    header, rows = table_rows(comparison)
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def markdown(comparison: Comparison) -> str:
    """The content of ``compare.md``: settings, table, column meanings, figures, runs."""
    header, rows = table_rows(comparison)
    data = comparison.to_dict()
    seeds = comparison.seeds
    lines = [
        f"# Comparison on `{comparison.problem}`",
        "",
        f"{data['steps']} steps per run; seeds {', '.join(map(str, seeds))}"
        + (" (cells: mean ± standard deviation over the seeds)" if len(seeds) > 1 else "")
        + f"; late window: the last {LATE_FRACTION:.0%} of the steps.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    shown = set(header[1:])
    lines += ["", "Columns:", ""]
    for key, head, text in COLUMNS + STUDY_COLUMNS:
        if head in shown:
            lines.append(f"- **{head}** (`{key}`): {text}.")
    reference = comparison.reference()
    if reference is not None:
        lines += [
            "",
            f"Exact reference ({reference.get('source') or 'reference'}): optimal objective "
            f"{reference['objective']:.6g}.",
        ]
    if comparison.figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in comparison.figures]
    lines += ["", "## Entries", ""]
    for r in comparison.results:
        settings = r.summaries[0].get("controller_config")
        runs = (
            f"[report]({r.folder}/summary.json)"
            if len(r.seeds) == 1
            else ", ".join(f"[seed {s}]({r.folder}/seed-{s}/summary.json)" for s in r.seeds)
        )
        lines.append(
            f"- **{r.entry.label}**: controller `{json.dumps(settings)}`, formulation "
            f"`{r.config.formulation['name']}`, optimizer `{json.dumps(r.config.optimizer)}`; "
            f"{runs}; configuration `{r.folder}/"
            + ("config.yaml`" if len(r.seeds) == 1 else f"seed-{r.seeds[0]}/config.yaml`")
        )
    return "\n".join(lines) + "\n"


def write_comparison(comparison: Comparison, spec: ProblemSpec, out: str | Path) -> list[Path]:
    """Write the figures, ``compare.json`` and ``compare.md`` under ``out``; return them.

    Figures need matplotlib; without it only the JSON and Markdown files are written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        from . import plots
    except ImportError:  # pragma: no cover - matplotlib missing
        logger.warning("matplotlib is not installed: no figures (pip install constrain[plots])")
    else:
        reference = comparison.reference()
        figure = plots.compare_figure(
            {r.entry.label: r.histories for r in comparison.results},
            out / "compare.png",
            reference=None if reference is None else reference.get("multipliers"),
            reference_objective=None if reference is None else reference.get("objective"),
            title=f"{comparison.problem}: "
            + ", ".join(r.entry.label for r in comparison.results)
            + (f" ({len(comparison.seeds)} seeds)" if len(comparison.seeds) > 1 else ""),
        )
        written.append(figure)
        entries = [
            {"label": r.entry.label, "runs": r.summaries, "seeds": r.seeds}
            for r in comparison.results
        ]
        written += spec.compare_figures(entries, out)
    comparison.figures = [str(p.relative_to(out)) for p in written]
    json_path, md_path = out / "compare.json", out / "compare.md"
    atomic_write_text(
        json_path, strict_json_dumps(comparison.to_dict(), indent=2, flag="nonfinite")
    )
    atomic_write_text(md_path, markdown(comparison))
    return [*written, json_path, md_path]
