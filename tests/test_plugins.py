"""--include-path: a task module and its template from a folder outside the package, end to end;
`list` names where each task came from; a broken plugin gets one line naming its file."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from xverse_eval.cli import main
from xverse_eval.evaluate import TaskSpec, make_task, run
from xverse_eval.registry import include_path, task_origin
from test_build import registry_restored  # noqa: F401 -- a fixture

# a two-item letter-scored task: the module reads its items from a JSONL file beside it
TASK = '''
import json
from pathlib import Path

from xverse_eval import register_task
from xverse_eval.task import MultipleChoiceTask
from xverse_eval.types import Sample


@register_task
class Capitals(MultipleChoiceTask):
    name = "{name}"
    version = "7"
    split = "test"

    def load_split(self, subset, split):
        rows = [json.loads(line) for line in Path(__file__).with_name("{name}.jsonl").read_text().splitlines()]
        return [Sample(id=f"c{{i}}", index=i, subset="", question=r["q"], choices=tuple(r["choices"]), target=r["answer"])
                for i, r in enumerate(rows)]
'''
TEMPLATE = ('{{ doc.question }}\n{% for c in doc.choices %}{{ LETTERS[loop.index0] }}. {{ c }}\n{% endfor %}Answer:'
            '{% if choice is not none %} {{ LETTERS[choice] }}{% endif %}')
ITEMS = [{"q": "The capital of France is", "choices": ["Berlin", "Paris", "Rome", "Madrid"], "answer": 1},
         {"q": "The capital of Italy is", "choices": ["Rome", "Oslo", "Lima", "Bern"], "answer": 0}]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def plugin_folder(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(TASK.format(name=name))
    (root / f"{name}.jinja").write_text(TEMPLATE)
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (root / "_helpers.py").write_text("raise RuntimeError('helpers are not imported')\n")  # "_" files are skipped
    return root


@pytest.mark.slow
def test_plugin_task_runs_end_to_end_on_the_real_model(tmp_path, smollm2):
    folder = plugin_folder(tmp_path / "plugins", "capitals_e2e")
    assert include_path(folder) == ["capitals_e2e"]
    assert task_origin("capitals_e2e") == str(folder / "capitals_e2e.py")
    task = make_task(TaskSpec("capitals_e2e"), None)
    item = task.build(task.samples()[0])
    assert item.prompt == "The capital of France is\nA. Berlin\nB. Paris\nC. Rome\nD. Madrid\nAnswer:"
    assert [r.continuation for r in item.requests] == [" A", " B", " C", " D"]
    path, results = run("smollm2-135m", [TaskSpec("capitals_e2e")], output_dir=str(tmp_path / "run"), model=smollm2)
    res = results["results"]["capitals_e2e"] if "capitals_e2e" in results["results"] else results["xverse_eval"]["results"]["capitals_e2e"]
    assert res["n"] == 2 and res["version"] == "7"
    records = [json.loads(line) for line in (path / "samples" / "capitals_e2e.jsonl").read_text().splitlines()]
    assert [len(r["extra"]["choice_scores"]["logprob"]) for r in records] == [4, 4]
    assert [r["weight"] for r in records] == [1.0, 1.0] and res["average"] == "micro"
    # the template's own hash is the prompt hash; the manifest remembers the folder, so `score` needs no flag
    import hashlib

    assert res["prompt_hash"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()[:12]
    assert json.loads((path / "config.json").read_text())["include_paths"] == [str(folder)]
    code, out, err = cli("score", str(path))
    assert code == 0, err


def test_list_shows_each_tasks_origin(tmp_path):
    folder = plugin_folder(tmp_path / "p", "capitals_list")
    code, out, err = cli("list", "--include-path", str(folder))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert out.splitlines()[0].rstrip().endswith("origin")
    assert rows["capitals_list"].rstrip().endswith(str(folder / "capitals_list.py"))
    assert rows["mmlu"].rstrip().endswith("built-in")


@pytest.mark.parametrize("source, message", [
    ("def broken(:\n", "SyntaxError: invalid syntax (line 1)"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("X = 1\n", "registers no task (decorate a Task subclass with @register_task)"),
    ("from xverse_eval import register_task\nfrom xverse_eval.task import Task\n\n@register_task\nclass M(Task):\n    name = 'mmlu'\n",
     "task 'mmlu' is registered twice"),
], ids=["syntax", "import", "nothing", "clash"])
def test_broken_plugin_is_one_line_naming_its_file(tmp_path, source, message):
    (tmp_path / "bad.py").write_text(source)
    code, out, err = cli("list", "--include-path", str(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xverse-eval: error: task plugin {tmp_path / 'bad.py'}: ") and message in lines[0]


def test_plugin_without_its_template(tmp_path):
    folder = plugin_folder(tmp_path / "p", "capitals_notemplate")
    (folder / "capitals_notemplate.jinja").unlink()
    code, _, err = cli("list", "--include-path", str(folder))
    assert code == 2 and "has no template capitals_notemplate.jinja beside it" in err and str(folder / "capitals_notemplate.py") in err


def readme_example() -> tuple[str, str]:
    """The task module and template the README's "Your own tasks" section shows, as written."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Your own tasks"):]
    module = section.split("```python\n", 1)[1].split("```", 1)[0]
    template = section.split("```jinja\n", 1)[1].split("```", 1)[0]
    return module, template


def test_readme_plugin_example_runs_as_written(tmp_path, registry_restored):
    module, template = readme_example()
    folder = tmp_path / "readme"
    folder.mkdir()
    (folder / "capitals.py").write_text(module.replace('name = "capitals"', 'name = "capitals_readme"'))
    (folder / "capitals_readme.jinja").write_text(template)
    assert include_path(folder) == ["capitals_readme"]
    task = make_task(TaskSpec("capitals_readme"), None)
    assert task.formulation == "letters"  # what the README says the default is
    item = task.build(task.samples()[0])
    assert item.prompt == "The capital of France is\nA. Berlin\nB. Paris\nAnswer:"
    assert [r.continuation for r in item.requests] == [" A", " B"]
    path, results = run("fake:1", [TaskSpec("capitals_readme")], output_dir=str(tmp_path / "run"))
    assert results["results"]["capitals_readme"]["n"] == 1 and results["results"]["capitals_readme"]["average"] == "micro"
    records = [json.loads(line) for line in (path / "samples" / "capitals_readme.jsonl").read_text().splitlines()]
    assert [r["weight"] for r in records] == [1.0]
