"""lm-eval 0.4's own prompts for GSM8K vs mathrl's, question by question, without any model.

Used by lmeval_compare.py (`--prompts-only`, and the task yaml of its full runs). lm-eval builds its
prompts in a subprocess of a python that has lm_eval (its TaskManager on a copy of the stock
gsm8k.yaml with the data from local files, `set_fewshot_seed(1234)`, `build_all_requests(limit=N)`:
the steps of its evaluator); mathrl's come from `question_shots` + `build_prompt` under the preset
that claims to match each lm-eval sampler.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# lm-eval's tasks/gsm8k/gsm8k.yaml (0.4.x) with the data source swapped for local files.
TASK_YAML = """\
task: {task_name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
{fewshot_config}doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
generation_kwargs:
  until:
    - "Question:"
    - "</s>"
    - "<|im_end|>"
  do_sample: false
  temperature: 0.0
repeats: 1
num_fewshot: 5
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""



PRESET = {"default": "lm-eval-gsm8k", "first_n": "lm-eval-gsm8k-first5"}  # lm-eval sampler → mathrl preset

# Run by a python that has lm_eval: the evaluator's steps for building requests, without a model.
LMEVAL_PROMPTS = """
import json, sys
from lm_eval.tasks import TaskManager
tasks_dir, task_name, n, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
task = TaskManager(include_path=tasks_dir).load([task_name])["tasks"][task_name]
task.set_config(key="num_fewshot", value=5)
task.set_fewshot_seed(seed=seed)
task.build_all_requests(limit=n, rank=0, world_size=1)
json.dump({str(inst.doc_id): inst.arguments[0] for inst in task.instances}, open(out, "w"))
"""


def write_task_yaml(tasks_dir: Path, task_name: str, src: Path, sampler: str) -> None:
    tasks_dir.mkdir(parents=True, exist_ok=True)
    fewshot = "fewshot_config:\n  sampler: first_n\n" if sampler == "first_n" else ""
    (tasks_dir / f"{task_name}.yaml").write_text(
        TASK_YAML.format(task_name=task_name, train=src / "train.jsonl", test=src / "test.jsonl", fewshot_config=fewshot))


def lmeval_python(args: argparse.Namespace) -> str:
    if args.lmeval_python:
        return args.lmeval_python
    import importlib.util

    return sys.executable if importlib.util.find_spec("lm_eval") else str(Path(args.lmeval_bin).parent / "python")


def mathrl_prompts(src: Path, n: int, preset_name: str) -> list[str]:
    """mathrl's prompts for the first n test questions under a preset (no tokenizer: no chat template)."""
    from mathrl.prompts import formats
    from mathrl.eval.evaluate import question_shots
    from mathrl.tasks import get_task

    proto = formats.Protocol(**formats.preset(preset_name))
    task = get_task("gsm8k", data_dir=str(src))
    test = task.load_test()
    shots = question_shots(task, proto, proto.resolved_format(), test[:n], test)
    return [formats.build_prompt(s.question, proto, None, shots[s.id]) for s in test[:n]]


def compare_prompts(args: argparse.Namespace, src: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """lm-eval's own prompts vs mathrl's, per sampler, on the first N test questions (no model)."""
    out: dict[str, Any] = {"n": args.n, "lmeval_python": lmeval_python(args)}
    kept: dict[str, tuple[dict[int, str], list[str]]] = {}
    for sampler, preset_name in PRESET.items():
        name = f"gsm8k_local_{sampler}"
        write_task_yaml(work / "tasks", name, src, sampler)
        dump = work / f"lmeval_prompts_{sampler}.json"
        proc = subprocess.run([out["lmeval_python"], "-c", LMEVAL_PROMPTS, str(work / "tasks"), name, str(args.n), "1234", str(dump)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"building lm-eval's prompts failed:\n{proc.stderr[-3000:]}")
        theirs = {int(k): v for k, v in json.loads(dump.read_text()).items()}
        ours = mathrl_prompts(src, args.n, preset_name)
        kept[sampler] = (theirs, ours)
        same = [i for i in range(args.n) if theirs.get(i) == ours[i]]
        out[sampler] = {"mathrl_preset": preset_name, "identical": len(same), "of": args.n,
                        "differ": [i for i in range(args.n) if i not in same][:10],
                        "distinct_shot_sets": len({p.rsplit("\n\nQuestion: ", 1)[0] for p in ours})}
        print(f"lm-eval sampler {sampler:8s} vs mathrl --protocol {preset_name}: prompts identical {len(same)}/{args.n} "
              f"({out[sampler]['distinct_shot_sets']} distinct shot sets)", flush=True)
    # control: the check can fail — stock lm-eval against the fixed-shot preset
    cross = sum(kept["default"][0].get(i) == kept["first_n"][1][i] for i in range(args.n))
    out["control_stock_lmeval_vs_first5"] = cross
    print(f"control: stock lm-eval vs mathrl --protocol lm-eval-gsm8k-first5: identical {cross}/{args.n}")
    return out
