"""The `mathrl` command: parse options, call the stage function, print the result."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

import mathrl.cli.train as cli_train
from mathrl.cli.common import parse_kv
from mathrl.errors import MathrlError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Post-train small language models for math reasoning, and measure what worked.")
data_app = typer.Typer(no_args_is_help=True, help="Write synthetic task data to a file.")
app.add_typer(data_app, name="data")


def print_summary(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("n", "strict", "flexible", "answer prop.", "thinking prop.", "tok/s"):
        table.add_column(col, justify="right")

    def pct(key: str) -> str:
        ci = summary.get(key.replace("accuracy", "ci95"))
        ci_text = f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
        return f"{summary[key]:.1%}{ci_text}" if key in summary else "-"

    table.add_row(str(summary.get("n", 0)), pct("accuracy_strict"), pct("accuracy_flexible"),
                  f"{summary.get('answer_proportion', 0):.1%}", f"{summary.get('thinking_proportion', 0):.1%}",
                  str(summary.get("generation", {}).get("tokens_per_second", "-")))
    console = Console()
    console.print(table)
    from mathrl.eval.regrade import describe_treatments

    if describe_treatments(summary):
        console.print(describe_treatments(summary))
    for key, groups in summary.get("accuracy_by", {}).items():
        if key != "answer_type":
            console.print(f"by {key}: " + "; ".join(f"{v} {g['strict']:.0%}/{g['flexible']:.0%} (n={g['n']})" for v, g in groups.items()))


def _eval_body(given: dict[str, Any], config: str | None, suite: str | None, suite_tasks: str | None,
               protocol: str | None) -> None:
    """Evaluate a model on a task: per-sample results, accuracy (strict and flexible) and the protocol."""
    from mathrl import config as cfgmod
    from mathrl.cli.options import is_yaml_file
    from mathrl.distributed import require_single_process
    from mathrl.eval.evaluate import eval_config, run_eval

    require_single_process("eval")
    if config and not is_yaml_file(config):  # --config was the task config before every command took a YAML
        typer.secho("warning: `mathrl eval --config TASK_CONFIG` is deprecated; use --task-config "
                    "(--config now takes a YAML of eval settings)", fg="yellow", err=True)
        given = {"task_config": config} | given
        config = None
    values = cfgmod.load_yaml(config) | given | ({"protocol": protocol} if protocol else {})
    # a YAML may name a suite too (the flags win); they are not EvalConfig fields: one run per task
    suite, suite_tasks = suite or values.pop("suite", None), suite_tasks or values.pop("suite_tasks", None)
    values.pop("suite", None), values.pop("suite_tasks", None)
    if (suite or suite_tasks) and ("task" in values or "task_config" in values):
        raise MathrlError("--suite/--suite-tasks evaluate several tasks: drop --task/--task-config (use --suite-tasks task:config)")
    if not values.get("output_dir"):
        raise MathrlError("mathrl eval needs --output-dir (or output_dir: in --config)")
    cfg = eval_config(values, str(config) if config else "options")
    output_dir = cfg.output_dir
    if suite or suite_tasks:
        from mathrl.eval.suite import print_suite, run_suite

        doc = run_suite(cfg, suite, suite_tasks, format_given="format" in values or "protocol" in values,
                        on_task=lambda label, r: typer.echo(f"{label}: n={r.get('n', 0)} strict={r.get('accuracy_strict', 0):.1%} "
                                                            f"flexible={r.get('accuracy_flexible', 0):.1%} ({r['status']})"))
        print_suite(doc)
        typer.echo(f"results: {Path(output_dir) / 'suite.json'}")
        return
    summary = run_eval(cfg)
    print_summary(summary, f"{cfg.model} on {cfg.task} ({cfg.split})")
    typer.echo(f"results: {Path(output_dir) / 'summary.json'}")


def _eval_command() -> Any:
    import inspect

    from mathrl.cli.options import config_option, settings_command
    from mathrl.eval.evaluate import EvalConfig
    from mathrl.prompts.formats import Protocol

    def option(name: str, help_text: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                 default=typer.Option(None, help=help_text))

    extra = (config_option("YAML of eval settings (e.g. configs/eval/lm_eval_gsm8k.yaml); flags override it."),
             option("suite", "Evaluate a named list of tasks instead, e.g. generalisation (see `mathrl tasks`)."),
             option("suite_tasks", "A custom suite: tasks a,b,c (task:config allowed)."),
             # a preset's name here; the Protocol's own fields are options of their own
             option("protocol", "Preset protocol, e.g. lm-eval-gsm8k (protocol options given beside it override its fields)."))
    return settings_command("eval", _eval_body.__doc__ or "", (EvalConfig, Protocol), _eval_body, extra)


app.command("eval")(_eval_command())


@app.command()
def grade(
    input: Path = typer.Option(..., "--input", help="JSONL with a completion (and a gold answer, or an id) per line."),
    task: str = typer.Option("gsm8k", help="Task whose gold reader and answer checker to use (e.g. math500, asdiv)."),
    config: Optional[str] = typer.Option(None, help="Task config (with --data-dir)."),
    data_dir: Optional[str] = typer.Option(None, help="Take golds from the task's test split here; lines matched by id or doc_id."),
    task_arg: Optional[list[str]] = typer.Option(None, "--task-arg", help="Task option key=value (repeatable)."),
    format: str = typer.Option("gsm8k", "--format", help="Format whose marker the strict extractor reads."),
    output: Optional[Path] = typer.Option(None, help="Write each line back with pred_* and correct_* fields."),
    completion_field: str = typer.Option("completion", help="Field holding the model's text (lm-eval: resps)."),
    gold_field: Optional[str] = typer.Option(None, help="Field holding the gold answer (default: answer, else gold)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Regrade completions produced anywhere (other harnesses, older runs) with mathrl's grader."""
    from mathrl.files import atomic_write_jsonl
    from mathrl.eval.regrade import describe_treatments, regrade

    rows, summary = regrade(input, task, format, completion_field=completion_field, gold_field=gold_field,
                            data_dir=data_dir, task_config=config, task_args=parse_kv(task_arg, "--task-arg"))
    if output:
        atomic_write_jsonl(output, rows)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"n={summary['n']}  strict={summary['accuracy_strict']:.1%}  flexible={summary['accuracy_flexible']:.1%}")
        if describe_treatments(summary):
            typer.echo(describe_treatments(summary))


def _write_task_data(task_name: str, config: str | None, n: int, seed: int, out: Path, split: str, options: dict[str, Any]) -> None:
    from mathrl.files import atomic_write_json, atomic_write_jsonl
    from mathrl.tasks import get_task

    if n < 1:
        raise MathrlError(f"--n must be at least 1, got {n}")
    size_key = {"test": "test_size", "validation": "validation_size"}.get(split, "train_size")
    samples = get_task(task_name, config, seed=seed, **{size_key: n}, **options).load(split)[:n]
    rows = [s.to_dict() for s in samples]
    if out.suffix == ".jsonl":
        atomic_write_jsonl(out, rows)
    else:
        atomic_write_json(out, rows)
    typer.echo(f"wrote {len(rows)} samples to {out}")


@data_app.command("linear-equations")
def data_linear(
    n: int = typer.Option(1000, help="Number of systems."),
    seed: int = typer.Option(0),
    variables: str = typer.Option("2", help="2, 3 or 2-3 unknowns."),
    coef_range: int = typer.Option(9, help="Coefficients drawn from [-R, R]."),
    sol_range: int = typer.Option(10, help="Integer solutions drawn from [-R, R]."),
    split: str = typer.Option("train", help="train, validation or test stream (disjoint across every config, seed and size)."),
    out: Path = typer.Option(..., help="Output file (.json list or .jsonl)."),
) -> None:
    """Systems of linear equations with a unique integer solution and worked elimination steps."""
    _write_task_data("linear_equations", variables, n, seed, out, split, {"coef_range": coef_range, "sol_range": sol_range})


@data_app.command("arithmetic")
def data_arithmetic(
    n: int = typer.Option(1000), seed: int = typer.Option(0),
    levels: str = typer.Option("1-3", help="1, 2, 3, 1-2, 2-3 or 1-3."),
    split: str = typer.Option("train", help="train, validation or test stream (disjoint across every config, seed and size)."),
    out: Path = typer.Option(...),
) -> None:
    """The arithmetic ladder: one-step sums to three-step word problems, with worked solutions."""
    _write_task_data("arithmetic", levels, n, seed, out, split, {})


for _kind in cli_train.TRAINERS:
    app.command(_kind)(cli_train.trainer_command(_kind))


@app.command()
def run(
    experiment_file: Path = typer.Argument(..., help="Experiment YAML (configs/experiments/)."),
    experiments: Optional[list[str]] = typer.Option(None, "--experiments", "-e",
                                                    help="Run only these experiments of the file (repeat, or a,b)."),
    only_eval: bool = typer.Option(False, "--only-eval", help="Run evaluation stages only (their trained models must be done)."),
    only_report: bool = typer.Option(False, "--only-report", help="Only rebuild the report from finished stages."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (stages, status, estimated cost) and stop."),
    runs_dir: Path = typer.Option(Path("runs"), help="Stages go to RUNS_DIR/<experiment>/<stage>/."),
    budget: Optional[str] = typer.Option(None, help="Wall-clock budget, e.g. 20m: calibrate, size the training stages "
                                                    "to fit, print the plan (overrides the file's budget:)."),
    replan: bool = typer.Option(False, help="Calibrate and plan again instead of reusing runs/<experiment>/plan.json."),
) -> None:
    """Run an experiment file: cached, resumable stages (eval, SFT, GRPO, PPO), then the report."""
    from mathrl.distributed import require_single_process
    from mathrl.experiments.runner import failed, run_file

    require_single_process("run")
    results = run_file(experiment_file, experiments, only_eval=only_eval, only_report=only_report, dry_run=dry_run,
                       runs_dir=runs_dir, budget=budget, replan=replan)
    bad = failed(results)
    if bad:
        typer.secho(f"{len(bad)} stage(s) failed or blocked: {', '.join(bad)}; fix and rerun the same command "
                    "(finished stages are kept)", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def export(
    adapter: Path = typer.Option(..., help="Directory with a LoRA adapter (from mathrl sft --method lora)."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge the adapter into the base weights."),
    output_dir: Path = typer.Option(..., help="Where the merged safetensors model goes."),
) -> None:
    """Merge a LoRA adapter into its base model and write safetensors + tokenizer."""
    from mathrl.engine import models

    if not merge:
        raise MathrlError("export only merges for now: pass --merge")
    if not (adapter / "adapter_config.json").exists():
        raise MathrlError(f"{adapter} has no adapter_config.json")
    model, tokenizer, _ = models.load_model(str(adapter), dtype="fp32")
    merged = model.merge_and_unload()
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    typer.echo(f"merged model written to {output_dir}")


@app.command()
def chat(
    model: str = typer.Option("smollm2-135m", help="Model or training output directory."),
    questions: Optional[list[str]] = typer.Argument(None, help="Questions to answer, one argument each; omit to type "
                                                    "questions interactively."),
    format: str = typer.Option("gsm8k", "--format"),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template"),
    max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.0),
    dtype: str = typer.Option("auto"),
) -> None:
    """Answer questions with a model (greedy unless --temperature), showing each completion and the
    extracted answer. Run it with a base model and a trained one to compare them before/after."""
    from mathrl.prompts import formats
    from mathrl.engine import models
    from mathrl.engine.decoding import DecodingSettings
    from mathrl.engine.generation import HFGenerator
    from mathrl.grading.verdict import grade_completion

    if questions and _looks_like_a_model(questions[0]):  # `mathrl chat runs/demo/grpo "q"`: the natural first try
        raise MathrlError(f"{questions[0]!r} is a model, not a question; did you mean --model {questions[0]}?")
    proto = formats.Protocol(format=format, chat_template=chat_template)
    fmt = proto.resolved_format()
    params = DecodingSettings(max_new_tokens=max_new_tokens, temperature=temperature, stop=formats.default_stop(proto))
    params.validate()
    m, tok, _ = models.load_model(model, dtype)
    gen = HFGenerator(m, tok, batch_size=1, progress=False)
    asked = list(questions or []) or iter(lambda: typer.prompt("question (empty to quit)", default="", show_default=False), "")
    for q in asked:
        if questions and len(questions) > 1:
            typer.secho(f"> {q}", bold=True)
        text = gen.generate([formats.build_prompt(q, proto, tok)], params)[0][0].text
        typer.echo(text)
        verdict = grade_completion(fmt, None, text, None)
        typer.secho(f"answer (strict): {verdict['pred_strict']}   (flexible): {verdict['pred_flexible']}", fg="cyan")


def _looks_like_a_model(text: str) -> bool:
    """An existing model or training directory, the built-in model's name, or a hub-like id (org/name)."""
    from mathrl.engine import models

    path = Path(text)
    if path.is_dir() and any((path / f).exists() for f in ("config.json", "adapter_config.json", "mathrl_config.json")):
        return True
    return text in models.EMBEDDED or bool(re.fullmatch(r"[\w.-]+/[\w.-]+", text)) and not path.exists()


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Evaluation, training or experiment directories (searched recursively)."),
    output_dir: Path = typer.Option(..., help="Where comparison.csv, paired.csv, the plots and report.html go."),
    metric: str = typer.Option("strict", help="strict or flexible: the metric of the plots and paired tests."),
    bootstrap: int = typer.Option(2000, help="Bootstrap resamples for the 95% intervals of paired differences."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    flips: Optional[str] = typer.Option(None, help="Comma-separated eval or model labels of one task (e.g. "
                                        "base,sft,ppo): write flips.md, the questions where their verdicts differ."),
    flips_n: int = typer.Option(5, help="Questions shown in flips.md (the first in test order)."),
) -> None:
    """Compare evaluations: accuracy with 95% intervals, McNemar tests, plots and report.html."""
    from mathrl.report.build import build_report
    from mathrl.report.console import print_report

    res = build_report(run_dirs, output_dir, metric=metric, n_resamples=bootstrap, seed=seed,
                       flips=[x for x in (flips or "").split(",") if x], flips_n=flips_n)
    print_report(res)


@app.command()
def tasks() -> None:
    """List registered tasks and their configs."""
    from mathrl.tasks import TASKS

    for name, cls in sorted(TASKS.items()):
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        typer.echo(f"{name:18s} configs: {', '.join(cls.configs):28s} {doc.splitlines()[0] if doc else ''}")
    from mathrl.eval.suite import SUITES

    for name, entries in SUITES.items():
        typer.echo(f"suite {name}: " + ", ".join(e.label + (f" ({e.format})" if e.format else "") for e in entries))


@app.command("formats")
def list_formats() -> None:
    """List output formats and protocol presets."""
    from mathrl.prompts.formats import FORMATS, PROTOCOLS

    for f in FORMATS.values():
        typer.echo(f"{f.name:10s} {f.description}")
    typer.echo("protocols: " + ", ".join(PROTOCOLS))


def quiet_libraries() -> None:
    """Deprecation notices that transformers prints when TRL or PEFT call its old names
    (`is_gradient_checkpointing`, `gradient_checkpointing_enable`, ...) are about those libraries' code,
    not the user's, and repeat on every run; the per-call "Loading weights" and dataset-map bars of a
    135M model flash by in a second. mathrl's own progress bars (generate, training, ppo) stay."""
    import warnings

    for pattern in (r".*is deprecated and will be removed in v6.*", r".*`past_key_values` is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


INTERRUPTED = "interrupted: results written so far are kept; rerun the same command to resume"


def main() -> None:
    quiet_libraries()
    try:
        app()
    except MathrlError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho(INTERRUPTED, err=True)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 130:  # Typer turns Ctrl-C inside a command into a silent exit 130
            typer.secho(INTERRUPTED, err=True)
        raise


if __name__ == "__main__":
    main()
