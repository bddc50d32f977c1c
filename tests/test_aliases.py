"""An lm-eval user's spellings: task names as lm-eval's own YAML files name them (read from the
installed lm_eval package), `--model hf --model_args pretrained=...`, `--limit 0.1`, `--num_fewshot`,
`--version`, the refused options with their reasons; and the early argument check: a typo fails in
about a second, before torch is imported (real child processes, timed)."""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xverse_eval import __version__, cli
from xverse_eval.errors import EvalError
from xverse_eval.registry import canonical_tasks, get_task_class, resolve_task_name, task_names

REPO = Path(__file__).resolve().parent.parent


def lm_eval_task_names(folder: str) -> list[str]:
    """The `task:` names of lm-eval's YAML files under lm_eval/tasks/FOLDER (the installed package)."""
    lm_eval = pytest.importorskip("lm_eval")
    root = Path(lm_eval.__file__).parent / "tasks" / folder
    names = []
    for path in sorted(root.rglob("*.yaml")):
        m = re.search(r'^"?task"?: *"?([\w.-]+)"?\s*$', path.read_text(encoding="utf-8"), re.M)
        if m:
            names.append(m.group(1))
    return names


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- task names


@pytest.mark.parametrize("folder, task, count", [("mmlu/default", "mmlu", 57), ("cmmlu", "cmmlu", 67), ("ceval", "ceval", 52)])
def test_every_lm_eval_subtask_name_selects_our_subset(folder, task, count):
    names = [n for n in lm_eval_task_names(folder) if n.startswith(("mmlu_", "cmmlu_", "ceval-valid_"))]
    assert len(names) == count
    resolved = {name: resolve_task_name(name) for name in names}
    assert {t for t, _ in resolved.values()} == {task}
    assert sorted(s for _, (subset,) in resolved.values() for s in [subset]) == sorted(get_task_class(task).all_subsets())


def test_lm_eval_agieval_names_map_to_our_single_answer_subsets():
    names = [n for n in lm_eval_task_names("agieval") if n.startswith("agieval_")]
    mapped, refused = {}, {}
    for name in names:
        try:
            mapped[name] = resolve_task_name(name)
        except EvalError as exc:
            refused[name] = str(exc)
    # lm-eval has the 16 single-answer subsets XVERSE scored, plus multi-answer and cloze ones we do not
    assert sorted(s for _, (s,) in mapped.values()) == sorted(get_task_class("agieval").all_subsets())
    assert mapped["agieval_lsat_ar"] == ("agieval", ["lsat-ar"]) and mapped["agieval_gaokao_english"] == ("agieval", ["gaokao-english"])
    assert sorted(refused) == ["agieval_gaokao_mathcloze", "agieval_gaokao_physics", "agieval_jec_qa_ca", "agieval_jec_qa_kd", "agieval_math"]
    assert refused["agieval_math"] == "unknown task 'agieval_math': agieval has no subset 'math'; `xverse-eval list agieval` shows its 16 subsets"


def test_every_subset_of_every_task_has_its_results_json_name():
    """results.json names subtasks `<task>_<subset>`: each of those names selects that subset."""
    for task in task_names():
        subsets = get_task_class(task).all_subsets()
        if subsets == [""]:
            continue
        for subset in subsets:
            assert resolve_task_name(f"{task}_{subset}") == (task, [subset])
            assert resolve_task_name(f"{task}_{subset.replace('-', '_')}") == (task, [subset])


def test_lm_eval_task_names_of_the_other_benchmarks():
    assert "commonsense_qa" in lm_eval_task_names("commonsense_qa")
    assert resolve_task_name("commonsense_qa") == ("csqa", [])
    assert resolve_task_name("ceval-valid") == ("ceval", [])
    for same in ("piqa", "gsm8k", "humaneval", "mmlu", "cmmlu", "agieval"):
        assert resolve_task_name(same) == (same, [])
    # our names win: gaokao_english is a task, not a subset "english" of gaokao
    assert resolve_task_name("gaokao_english") == ("gaokao_english", [])


def test_canonical_tasks_keeps_order_options_and_suites():
    assert canonical_tasks("mmlu_anatomy,commonsense_qa:variant=c49e77,xverse,ceval-valid_accountant:variant=test") == \
        "mmlu:anatomy,csqa:variant=c49e77,xverse,ceval:accountant:variant=test"
    assert canonical_tasks("mmlu_anatomy:virology") == "mmlu:anatomy:virology"


@pytest.mark.parametrize("name, message", [
    ("mmlu_anatomyy", "unknown task 'mmlu_anatomyy': mmlu has no subset 'anatomyy'; did you mean 'mmlu_anatomy' (mmlu:anatomy)?"),
    ("ceval-valid_accountnt", "unknown task 'ceval-valid_accountnt': ceval has no subset 'accountnt'; did you mean 'ceval-valid_accountant' (ceval:accountant)?"),
    ("commonsenseqa", "unknown task 'commonsenseqa'; did you mean 'commonsense_qa'?"),
    ("gsm8", "unknown task 'gsm8'; did you mean 'gsm8k'?"),
    ("hellaswag", "unknown task 'hellaswag'; known tasks: agieval, ceval, cmmlu, csqa, gaokao, gaokao_english, gsm8k, humaneval, mmlu, piqa, race (xverse-eval list)"),
    ("mmlu_stem", "task 'mmlu_stem' (lm-eval) is not mapped: lm-eval groups MMLU subjects differently from hendrycks' categories.py "
                  "(anatomy is STEM there); run mmlu: results.json has the 4 hendrycks categories"),
    ("humaneval_instruct", "task 'humaneval_instruct' (lm-eval) is not mapped: lm-eval's instruct prompt is another one; "
                           "humaneval:variant=instruct (with --apply-chat-template) is EvalPlus's"),
])
def test_mistyped_task_names_get_a_did_you_mean(capsys, name, message):
    rc, out, err = run_cli(capsys, "run", "--model", "smollm2-135m", "--tasks", name)
    assert (rc, out, err) == (2, "", f"xverse-eval: error: {message}\n")


# ----------------------------------------------------------------------------- the early check


def child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "smollm2-135m", "--tasks", "mmlu_anatomyy"], "unknown task 'mmlu_anatomyy'"),
    (["run", "--model", "./no-such-model", "--tasks", "mmlu_anatomy"], "model path does not exist: ./no-such-model"),
    (["run", "--model", "smollm2-135m", "--tasks", "piqa", "--data-dir", "/no/such/dir"], "data dir does not exist: /no/such/dir"),
    (["run", "--model", "smollm2-135m", "--tasks", "csqa", "--num_fewshot", "5"], "--num_fewshot 5: csqa"),
])
def test_a_typo_fails_in_seconds_before_torch_is_imported(argv, message):
    """The whole command as a user runs it (a new interpreter): exit 2 after well under 3 s of work, and
    torch and transformers never imported (they take 3 s on an idle machine, 20 s on a busy one). The
    bound is on the child's CPU time (about 0.3 s here), which the load of a shared machine cannot
    inflate; the wall-clock bound is only a backstop."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xverse_eval", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert cpu < 3.0 and elapsed < 30.0, f"{cpu:.1f} s of CPU, {elapsed:.1f} s of wall clock"
    probe = child(f"import sys; from xverse_eval.cli import main; rc = main({argv!r}); "
                  "print(rc, sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    assert probe.stdout.split("\n")[0] == "2 []", probe.stdout + probe.stderr


def test_cli_and_registry_import_without_torch():
    probe = child("import sys, xverse_eval.cli, xverse_eval.registry, xverse_eval.rundirs; xverse_eval.registry.load_tasks(); "
                  "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


# ----------------------------------------------------------------------------- lm-eval flags


def translated(*argv: str):
    args = cli.parser().parse_args(["run", "--tasks", "piqa", *argv])
    cli.translate_model(args)
    return args


def test_model_hf_with_pretrained_maps_to_our_flags():
    args = translated("--model", "hf", "--model_args", "pretrained=org/name,dtype=bfloat16,revision=v2,trust_remote_code=True,"
                      "device=cuda:1,batch_size=8,parallelize=True,attn_implementation=eager")
    assert (args.model, args.dtype, args.revision, args.trust_remote_code, args.device, args.batch_size) == \
        ("org/name", "bfloat16", "v2", True, "cuda:1", 8)
    assert args.model_args == {"device_map": "auto", "attn_implementation": "eager"}
    # lm-eval's default model type is hf; space-separated --model_args merge as in lm-eval
    args = translated("--model_args", "pretrained=./ckpt", "dtype=float16")
    assert (args.model, args.dtype, args.model_args) == ("./ckpt", "float16", None)
    # our own spelling is untouched
    args = translated("--model", "./ckpt", "--model-args", "subfolder=x")
    assert (args.model, args.model_args) == ("./ckpt", {"subfolder": "x"})


def test_served_model_types_keep_their_arguments():
    args = translated("--model", "local-completions", "--model_args", "base_url=http://127.0.0.1:8000/v1/completions,model=m,tokenizer=t")
    assert args.model == "local-completions" and args.model_args == {"base_url": "http://127.0.0.1:8000/v1/completions", "model": "m", "tokenizer": "t"}


@pytest.mark.parametrize("argv, message", [
    (["--model", "hf"], "--model hf needs --model_args pretrained=HUB_ID_OR_PATH (or give it as --model HUB_ID_OR_PATH)"),
    ([], "--model is required: a hub id, a local folder, a .gguf file or smollm2-135m (or lm-eval's --model hf --model_args pretrained=...)"),
    (["--model", "org/a", "--model_args", "pretrained=org/b"],
     "--model org/a and --model_args pretrained=org/b: name the model once (--model hf --model_args pretrained=X is lm-eval's spelling of --model X)"),
    (["--model", "hf", "--model_args", "pretrained=org/a,max_length=4096"],
     "--model_args max_length=...: lm-eval's HFLM option has no equivalent here: prompts are checked against the model's own context length, as each protocol's length rule says"),
    (["--model", "hf", "--model_args", "pretrained=org/a,dtype=float64"], "--model_args dtype=float64: use one of auto, float32, bfloat16, float16"),
    (["--model", "hf", "--model_args", "pretrained=org/a,dtype=float16", "--dtype", "bfloat16"],
     "--model_args dtype=float16 and --dtype bfloat16: give it once"),
    (["--model", "vllm"], "--model vllm: lm-eval runs vllm inside its own process; here, serve the model with it (its OpenAI-compatible server) "
                          "and use --model local-completions --model_args base_url=URL,model=NAME"),
])
def test_model_spellings_that_do_not_map(argv, message):
    with pytest.raises(EvalError) as exc:
        translated(*argv)
    assert str(exc.value) == message


@pytest.mark.parametrize("tasks, shots, message", [
    ("csqa", "8", "--num_fewshot 8: csqa (default) is a fixed-shot reproduction protocol with 7 shots; variant e51e32 has 8: --tasks csqa:variant=e51e32"),
    ("mmlu_anatomy", "0", "--num_fewshot 0: mmlu (default) is a fixed-shot reproduction protocol with 5 shots; no variant of mmlu has 0 (xverse-eval list mmlu)"),
    ("piqa,gsm8k", "0", "--num_fewshot 0: gsm8k (default) is a fixed-shot reproduction protocol with 4 shots; no variant of gsm8k has 0 (xverse-eval list gsm8k)"),
])
def test_num_fewshot_other_than_the_protocol_is_refused(capsys, tasks, shots, message):
    rc, out, err = run_cli(capsys, "run", "--model", "smollm2-135m", "--tasks", tasks, "--num_fewshot", shots)
    assert (rc, err) == (2, f"xverse-eval: error: {message}\n")


@pytest.mark.parametrize("option, reason", list(cli.LM_EVAL_REFUSED.items()))
def test_refused_lm_eval_options_say_why(capsys, option, reason):
    rc, out, err = run_cli(capsys, "run", "--model", "smollm2-135m", "--tasks", "piqa", option, "1")
    assert (rc, out) == (2, "")
    assert err == f"xverse-eval run: error: {option} (lm-eval) is not accepted: {reason} (see xverse-eval run --help)\n"


def test_version(capsys):
    rc, out, _ = run_cli(capsys, "--version")
    assert (rc, out) == (0, f"xverse-eval {__version__}\n")


@pytest.mark.parametrize("text, value", [("20", 20), ("20.0", 20), ("0.1", 0.1), ("0.5", 0.5)])
def test_limit_takes_a_count_or_a_fraction(text, value):
    args = cli.parser().parse_args(["run", "--model", "m", "--tasks", "piqa", "--limit", text])
    assert args.limit == value and type(args.limit) is type(value)


def test_lm_eval_command_is_the_same_run_as_ours(tmp_path, data_dir, capsys):
    """The lm-eval spelling of a command and ours are one run: the second, into the same run dir,
    finds every response stored (a resume) and writes the same numbers; 0.02 of anatomy's 135 is 3."""
    out = str(tmp_path / "run")
    ours = ["run", "--model", "fake:0", "--tasks", "mmlu:anatomy", "--limit", "0.02", "--data-dir", data_dir,
            "--output-dir", out, "--dtype", "float32"]
    assert cli.main(ours) == 0
    first = json.loads(Path(out, "results.json").read_text())
    lm_eval = ["run", "--model", "hf", "--model_args", "pretrained=fake:0,dtype=float32", "--tasks", "mmlu_anatomy",
               "--num_fewshot", "5", "--limit", "0.02", "--data_dir", data_dir, "--output_path", out, "--log_samples"]
    assert cli.main(lm_eval) == 0
    capsys.readouterr()
    second = json.loads(Path(out, "results.json").read_text())
    assert second["n-samples"] == first["n-samples"] == {"mmlu": {"original": 135, "effective": 3}}
    assert second["results"] == first["results"]
    assert len(Path(out, "responses.jsonl").read_text().splitlines()) == 3 * 4  # nothing computed twice
    assert len(Path(out, "samples", "mmlu.jsonl").read_text().splitlines()) == 3


def test_a_hub_id_without_network_fails_at_once(tmp_path):
    """No network (an endpoint that cannot resolve) and no cached copy: one line, in seconds, instead of
    half a minute of retries per file; torch is never imported."""
    import os

    env = dict(os.environ, HF_ENDPOINT="https://hub.example.invalid", HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="0")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xverse_eval", "run", "--model", "org/model", "--tasks", "piqa"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30.0  # the DNS answer is immediate, its wait bounded at 2 s
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("xverse-eval: error: model org/model: hub.example.invalid cannot be reached (no network?) and the local "
                           "Hugging Face cache does not have it; download it where there is network, or give a local folder\n")


def test_list_and_show_prompt_take_lm_eval_names(capsys, data_dir):
    rc, out, _ = run_cli(capsys, "list", "commonsense_qa")
    assert rc == 0 and out.startswith("csqa (version ")
    ours = run_cli(capsys, "show-prompt", "mmlu:anatomy", "--index", "3", "--data-dir", data_dir)
    theirs = run_cli(capsys, "show-prompt", "mmlu_anatomy", "--index", "3", "--data-dir", data_dir)
    assert theirs == ours and ours[0] == 0 and ours[1].endswith("Answer:")


def test_tasks_space_separated_as_in_lm_eval():
    args = cli.parser().parse_args(["run", "--model", "m", "--tasks", "mmlu_anatomy", "commonsense_qa,piqa"])
    assert canonical_tasks(",".join(args.tasks)) == "mmlu:anatomy,csqa,piqa"
