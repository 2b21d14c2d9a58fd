"""Experiment files → an ordered list of stages, each with built settings and a cache key.

An experiment file (`configs/experiments/*.yaml`) holds one or more experiments:

    experiments:
      NAME:                         # a directory name: runs/NAME/
        description: "..."          # optional, free text
        defaults:                   # settings shared by every stage ...
          model: Qwen/Qwen2.5-1.5B-Instruct    # ... each stage takes the keys its settings class has
          task: gsm8k
          format: tags
          sft: {method: lora}       # ... and per-kind defaults (sft, grpo, ppo, eval) for one kind only
        stages:                     # training stages, run in this order
          sft-full:
            kind: sft               # sft | grpo | ppo
            from: base              # base (default) | an earlier stage (its output is the model) | a model id
            stage: full             # any other key: a setting of that kind (`mathrl sft --help`, ...)
        seeds: [0, 1, 2]            # optional: every training stage once per seed (sft → sft-s0, sft-s1, sft-s2)
        sweep:                      # optional: choose a stage's settings on validation (mathrl/experiments/sweep.py)
          sft-full: {points: {lo: {learning_rate: 1.0e-5}, hi: {learning_rate: 2.0e-5}}, select: {prefer: first}}
        eval:                       # a grid (or a list of grids): models × tasks × formats × chat_template × shots × variants
          models: [base, sft-full]  # base | a stage name | {label: model id or path}
          tasks: [gsm8k, "arithmetic:1-2", {task: jsonl, label: mine, task_args: {path: mine.jsonl}}]
          suite: generalisation     # adds the suite's tasks (each in its suite format unless formats is set)
          formats: [tags]           # default: the format in defaults
          chat_template: [true, false]
          shots: [0, 3]
          variants:                 # optional: named overlays of eval settings, one more grid axis
            instruction: {}         #   (e.g. prompts with and without the format's instruction)
            plain: {system_prompt: ""}
          limit: 500                # any other key: a fixed eval setting (`mathrl eval --help`)

With `seeds`, a training stage `sft` runs once per seed as `sft-s<seed>` with `seed: <seed>` (the
training seed: initialisation of new weights, data order, RL sampling; the training subset stays the
same, so replicas differ by training randomness only); `from: sft` in a replicated stage means the
same seed's replica, and `sft` in eval.models means every replica. Base models are evaluated once.
The report gives each replicated number's mean and spread across seeds and pools the paired tests.

A flat default goes to every stage whose settings have that name (`temperature` would reach both
eval and GRPO: put kind-specific values under `defaults.<kind>`). A task entry without a config
inherits the defaults' `task_config`/`task_args` only when it names the defaults' task, so an
out-of-domain task never gets the in-domain task's config.

Eval stages are named `eval/<model>/<task>-<format>-<chat|raw>-<k>shot[-<variant>]` (`<task>` is
`task.config` when a config is given; a variant with no settings of its own adds no suffix). The cache key of a stage is the sha256 of its kind, its
settings (eval: `EvalConfig.identity()`, the settings that change the numbers; training: every
setting except output_dir, resume, report_to) and the keys of the stages it depends on; a
dependency's output path is hashed as its name, so moving `runs/` keeps every key.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl import config as cfgmod
from mathrl.errors import MathrlError
from mathrl.experiments.kinds import KINDS, KindUnavailable, build_config, setting_names, training_kinds
from mathrl.experiments.stage_key import NOT_HASHED, stage_key  # noqa: F401 - NOT_HASHED: read by tests

RESERVED = ("base", "eval", "report")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Stage:
    name: str
    kind: str
    out: Path
    settings: dict[str, Any]  # flat settings, before building
    deps: list[str] = field(default_factory=list)
    method: str = "base"  # base | sft | grpo | ppo: what produced the model this stage trains or evaluates
    model_label: str = ""  # eval: the model's name in the grid; training: the stage name
    eval_setting: dict[str, Any] | None = None
    config: Any = None  # the built settings dataclass; None when the kind is unavailable
    unavailable: str | None = None
    key: str = ""
    budget_share: float | None = None  # training stages under a budget: their share of the training time
    replica_of: str | None = None  # with `seeds`: the stage name in the file this stage replicates
    sweep_point: tuple[str, str] | None = None  # a sweep's validation eval: (swept stage, point)
    seed: int | None = None  # with `seeds`: the training seed of this replica (evals: of the model evaluated)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED:
        raise MathrlError(f"{what} {name!r}: use letters, digits, '-', '_' and '.', and not {', '.join(RESERVED)}")
    return name


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MathrlError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _looks_like_model(ref: str) -> bool:
    from mathrl.engine.models import EMBEDDED

    return ref in EMBEDDED or "/" in ref or Path(ref).expanduser().exists()


def expand(name: str, spec: Any, runs_dir: Path, source: str) -> list[Stage]:
    """One experiment → stages in run order: evals of the base model(s), then each training stage
    followed by its evals, so results arrive as early as they can."""
    _check_name(name, "experiment")
    spec = _mapping(spec, f"{source}: experiment {name!r}")
    where = f"{source}: experiments.{name}"
    for key in spec:
        if key not in ("description", "defaults", "stages", "eval", "budget", "seeds", "sweep"):
            raise MathrlError(f"{where}: unknown key {key!r} (expected defaults, stages, eval, budget, seeds, sweep, "
                              "description)")
    defaults = _mapping(spec.get("defaults"), f"{where}.defaults")
    per_kind = {k: _mapping(defaults.pop(k), f"{where}.defaults.{k}") for k in list(defaults) if k in KINDS}
    known = {k: setting_names(k) for k in KINDS}
    def shared(kind: str) -> dict[str, Any]:
        names = known[kind]
        return {k: v for k, v in defaults.items() if names is None or k in names} | per_kind.get(kind, {})

    exp_dir = runs_dir / name
    trained: dict[str, Stage] = {}
    stage_specs = _mapping(spec.get("stages"), f"{where}.stages")
    for sname in stage_specs:
        _check_name(sname, f"{where}.stages: stage")
    from mathrl.experiments import sweep as sweeps_

    # swept stages → their points; until every sweep has chosen, what follows a swept stage waits
    sweeps, stage_specs, held, alias = sweeps_.prepare(spec, stage_specs, exp_dir, where)
    stage_specs, replicas = _replicate(stage_specs, spec.get("seeds"), where)
    for sname, sspec in stage_specs.items():
        swhere = f"{where}.stages.{sname}"
        sspec = _mapping(sspec, swhere)
        kind, src = sspec.pop("kind", None), sspec.pop("from", None)
        replica_of = sspec.pop("_replica_of", None)
        seed = sspec.get("seed") if replica_of else None
        share = sspec.pop("budget_share", None)
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0):
            raise MathrlError(f"{swhere}: budget_share must be a positive number, got {share!r}")
        if kind not in training_kinds():
            raise MathrlError(f"{swhere}: kind must be one of {', '.join(training_kinds())}, got {kind!r}")
        for owned in ("output_dir", "resume"):
            if owned in sspec:
                raise MathrlError(f"{swhere}: {owned!r} is set by the runner (runs/<experiment>/<stage>/)")
        settings = shared(kind) | sspec
        stage = Stage(sname, kind, exp_dir / sname, settings, method=kind, model_label=sname, budget_share=share,
                      replica_of=replica_of, seed=seed)
        if src in trained:
            settings["model"] = str(trained[src].out)
            stage.deps = [src]
        elif src in stage_specs:
            raise MathrlError(f"{swhere}: from {src!r} must name a stage listed before it")
        elif src not in (None, "base"):
            if not isinstance(src, str) or not _looks_like_model(src):
                close = difflib.get_close_matches(str(src), list(trained), n=1)
                raise MathrlError(f"{swhere}: from {src!r} is neither an earlier stage nor a model"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""))
            if "model" in sspec:
                raise MathrlError(f"{swhere}: give either from or model, not both")
            settings["model"] = src
        settings["output_dir"] = str(stage.out)
        trained[sname] = stage

    _check_defaults(defaults, [known[k] for k in {"eval", *(s.kind for s in trained.values())}], where)
    # a sweep still choosing: no test evaluation yet
    evals = _test_evals(spec.get("eval") if not held else None, alias, shared("eval"), trained, exp_dir, where, replicas)
    for sw in sweeps.values():
        evals += _validation_stages(sw, shared("eval"), trained, exp_dir, f"{where}.sweep.{sw.stage}.eval", replicas)
    ordered = [s for s in evals if not s.deps]
    for sname, stage in trained.items():
        ordered += [stage] + [s for s in evals if s.deps == [sname]]
    by_name: dict[str, Stage] = {}
    for stage in ordered:
        if stage.name in by_name:
            raise MathrlError(f"{where}: two stages are named {stage.name!r} (duplicate grid entries?)")
        by_name[stage.name] = stage
        _finish(stage, by_name, source)
    return ordered


def _check_defaults(defaults: dict[str, Any], used: list[set[str] | None], where: str) -> None:
    """Every default is a setting of some kind used here (checked when every kind used is importable: then a
    default none knows is a typo)."""
    if all(names is not None for names in used):
        everything = set().union(*used)
        for key in defaults:
            if key not in everything:
                close = difflib.get_close_matches(key, everything, n=1)
                raise MathrlError(f"{where}.defaults: no stage here has a setting {key!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""))


def _replicate(specs: dict[str, Any], seeds: Any, where: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """`seeds: [0, 1, 2]` → every training stage once per seed, seed-major (all of seed 0 first, so one
    complete replica arrives earliest), and stage name → its replicas' names (itself without seeds)."""
    if seeds is None:
        return specs, {name: [name] for name in specs}
    seeds = _as_list(seeds)
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds) or len(set(seeds)) < len(seeds):
        raise MathrlError(f"{where}.seeds: expected a list of distinct non-negative integers, got {seeds!r}")
    out: dict[str, Any] = {}
    for seed in seeds:
        for name, spec in specs.items():
            spec = _mapping(spec, f"{where}.stages.{name}")
            if "seed" in spec:
                raise MathrlError(f"{where}.stages.{name}: sets seed, but the experiment's seeds axis sets it for every stage")
            src = spec.get("from")
            if isinstance(src, str) and src in specs:
                spec["from"] = f"{src}-s{seed}"
            out[f"{name}-s{seed}"] = spec | {"seed": seed, "_replica_of": name}
    return out, {name: [f"{name}-s{seed}" for seed in seeds] for name in specs}


def _task_entries(tasks: Any, shared: dict[str, Any], where: str) -> list[dict[str, Any]]:
    base_task = {"task": shared.get("task", "gsm8k"), "task_config": shared.get("task_config"),
                 "task_args": shared.get("task_args", {})}
    if tasks is None:
        return [base_task]
    entries = []
    for item in _as_list(tasks):
        if isinstance(item, str):
            task, _, conf = item.partition(":")
            item = {"task": task} | ({"task_config": conf} if conf else {})
        elif not isinstance(item, dict) or "task" not in item:
            raise MathrlError(f"{where}.tasks: each entry is 'task', 'task:config' or a mapping with 'task', got {item!r}")
        item = dict(item)
        if item["task"] == shared.get("task") and "task_config" not in item:
            item = base_task | item
        entries.append({"task_config": None, "task_args": {}} | item)
    return entries


def _variants(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """`variants: {name: {setting: value}}` → name → overlay; none: one unnamed variant."""
    if value is None:
        return {"": {}}
    value = _mapping(value, f"{where}.variants")
    if not value:
        raise MathrlError(f"{where}.variants: name at least one variant")
    out = {}
    for name, overlay in value.items():
        _check_name(name, f"{where}.variants: variant")
        overlay = _mapping(overlay, f"{where}.variants.{name}")
        for key in ("output_dir", "overwrite", "model", "task", "task_config", "format", "chat_template", "shots"):
            if key in overlay:
                raise MathrlError(f"{where}.variants.{name}: {key!r} is a grid axis or set by the runner; "
                                  "a variant changes other eval settings")
        out[name] = overlay
    return out


def _eval_stages(ev: dict[str, Any], shared: dict[str, Any], trained: dict[str, Stage], exp_dir: Path,
                 where: str, replicas: dict[str, list[str]] | None = None) -> list[Stage]:
    replicas = replicas or {}
    axes = {k: ev.pop(k) for k in ("models", "tasks", "formats", "chat_template", "shots") if k in ev}
    variants = _variants(ev.pop("variants", None), where)
    if "suite" in ev:  # a suite adds its tasks to the grid, each with the suite's format unless formats is set
        from mathrl.eval.suite import resolve

        suite = ev.pop("suite")
        _, entries = resolve(suite, None) if isinstance(suite, str) else resolve(None, suite)
        axes["tasks"] = _as_list(axes.get("tasks", [])) + [
            {"task": e.task, "task_config": e.config, "suite_format": e.resolved_format()} for e in entries]
    fixed = shared | ev  # what is left in the eval section: fixed settings for every cell
    models = [r for m in _as_list(axes.get("models", ["base"]))
              for r in (replicas.get(m, [m]) if isinstance(m, str) else [m])]
    formats_ = _as_list(axes.get("formats", fixed.get("format", "gsm8k")))
    chats = _as_list(axes.get("chat_template", fixed.get("chat_template", True)))
    shots = _as_list(axes.get("shots", fixed.get("shots", 0)))
    for key in ("output_dir", "overwrite"):
        if key in fixed:
            raise MathrlError(f"{where}: {key!r} is set by the runner")
    out = []
    for entry in models:
        if isinstance(entry, dict) and len(entry) == 1:  # {label: model id}: an outside model, untrained here
            label, model = next(iter(entry.items()))
            label, deps, method = _check_name(label, f"{where}.models: label"), [], "base"
        elif entry == "base":
            label, model, deps, method = "base", fixed.get("model"), [], "base"
        elif entry in trained:
            label, model, deps, method = entry, str(trained[entry].out), [entry], trained[entry].kind
        else:
            close = difflib.get_close_matches(str(entry), ["base", *trained], n=1)
            raise MathrlError(f"{where}.models: {entry!r} is not base, a stage name or {{label: model}}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
        for task in _task_entries(axes.get("tasks"), fixed, where):
            task = dict(task)
            conf = task["task_config"]
            task_label = task.pop("label", None) or task["task"] + (f".{conf}" if conf else "")
            suite_format = task.pop("suite_format", None)
            for fmt in [suite_format] if suite_format and "formats" not in axes else formats_:
                for chat, k, (variant, overlay) in itertools.product(chats, shots, variants.items()):
                    # a variant that changes nothing is the default setting: no suffix, so it pairs in the
                    # report with other grids' evaluations of that setting (one factor differs, not two)
                    setting = f"{task_label}-{fmt}-{'chat' if chat else 'raw'}-{k}shot" + (f"-{variant}" if overlay else "")
                    d = exp_dir / "eval" / label / setting
                    settings = fixed | overlay | task | {"format": fmt, "chat_template": chat, "shots": k, "output_dir": str(d)}
                    if model is not None:
                        settings["model"] = model
                    src = trained.get(label)
                    out.append(Stage(f"eval/{label}/{setting}", "eval", d, settings, deps, method, label, {
                        "task": task["task"], "task_config": task["task_config"], "format": fmt,
                        "chat_template": chat, "shots": k, "variant": variant or None, "setting": setting},
                        replica_of=src.replica_of if src else None, seed=src.seed if src else None))
    return out


def _test_evals(grids: Any, alias: dict[str, str], shared: dict[str, Any], trained: dict[str, Stage], exp_dir: Path,
                where: str, replicas: dict[str, list[str]]) -> list[Stage]:
    """The eval section's stages (none without one; a list of grids: their union, e.g. prompt variants for
    base only), a swept stage's name standing for its winner."""
    evals = []
    for i, grid in enumerate(_as_list(grids) if grids is not None else []):
        gwhere = f"{where}.eval" + (f"[{i}]" if isinstance(grids, list) else "")
        grid = _mapping(grid, gwhere)
        if "models" in grid:
            grid["models"] = [alias.get(m, m) if isinstance(m, str) else m for m in _as_list(grid["models"])]
        evals += _eval_stages(grid, shared, trained, exp_dir, gwhere, replicas)
    return evals


def _validation_stages(sw: Any, shared: dict[str, Any], trained: dict[str, Stage], exp_dir: Path, where: str,
                       replicas: dict[str, list[str]]) -> list[Stage]:
    """Each point of a sweep on the validation split, in runs/<exp>/sweeps/<stage>/ (one cell per point)."""
    out = []
    for point in sw.points:
        name = sw.point_stage(point)
        if name not in trained and not any(r in trained for r in replicas.get(name, [])):
            continue  # held back behind another sweep
        cells = _eval_stages({"models": [name]} | sw.eval | {"split": "validation"}, shared, trained,
                             exp_dir / "sweeps" / sw.stage, where, replicas)
        if len(cells) != len(replicas.get(name, [name])):
            raise MathrlError(f"{where}: evaluates each point in {len(cells) // len(replicas.get(name, [name]))} "
                              "settings; a sweep compares its points in one (one task, format, chat_template, shots)")
        for st in cells:
            st.eval_setting["setting"] += "-validation"
            st.name = f"eval/{st.model_label}/{st.eval_setting['setting']}"
            st.sweep_point = (sw.stage, point)
        out += cells
    first = next((trained[sw.point_stage(p)] for p in sw.points if sw.point_stage(p) in trained), None)
    if first is not None:  # the model the points start from, on the same questions: the reference they must beat
        dep = trained.get(first.deps[0]) if first.deps else None
        start = (dep.replica_of or dep.name) if dep is not None else "base"
        cells = _eval_stages({"models": [start]} | sw.eval | {"split": "validation"}, shared, trained,
                             exp_dir / "sweeps" / sw.stage, where, replicas)
        for st in cells:
            st.eval_setting["setting"] += "-validation"
            st.name = f"eval/{sw.stage}@start/{st.model_label}/{st.eval_setting['setting']}"
            st.sweep_point = (sw.stage, "")
        out += cells
    return out


def _finish(stage: Stage, by_name: dict[str, Stage], source: str) -> None:
    """Build the settings (when the kind is importable) and the cache key."""
    try:
        stage.config = build_config(stage.kind, stage.settings, f"{source}: stage {stage.name}")
    except KindUnavailable as e:
        stage.unavailable = str(e)
    stage.key = stage_key(stage.kind, stage.settings, stage.config,
                          {str(by_name[d].out): f"<stage {d}>" for d in stage.deps},
                          {d: by_name[d].key for d in stage.deps})


def rebuild(stages: list[Stage], source: str) -> None:
    """Rebuild every stage's settings and cache key after its `settings` changed (e.g. a budget plan)."""
    by_name: dict[str, Stage] = {}
    for stage in stages:
        by_name[stage.name] = stage
        _finish(stage, by_name, source)


def experiment_budget(path: str | Path, name: str) -> Any:
    """The `budget:` an experiment of the file sets, or None."""
    return (cfgmod.load_yaml(path).get("experiments") or {}).get(name, {}).get("budget")


def load_experiments(path: str | Path, runs_dir: str | Path, names: list[str] | None = None) -> dict[str, list[Stage]]:
    """Experiment name → its stages, for the named experiments (all when `names` is empty)."""
    data = cfgmod.load_yaml(path)
    exps = data.get("experiments")
    if set(data) != {"experiments"} or not isinstance(exps, dict) or not exps:
        raise MathrlError(f"{path}: expected one top-level key, experiments: a mapping of name → experiment")
    wanted = [n for item in names or [] for n in item.split(",") if n]
    for n in wanted:
        if n not in exps:
            raise MathrlError(f"{path}: no experiment {n!r}; the file has: {', '.join(exps)}")
    return {n: expand(n, exps[n], Path(runs_dir), str(path)) for n in (wanted or list(exps))}
