"""Jinja2 prompt rendering. One template per task, `prompts/<task>.jinja`.

Templates see `doc` (the Sample), `shots` (list of Samples), `choice` (None for the shared
context, or the index of the choice whose whole scored string is wanted), `variant` (its name),
`protocol` (the Variant: `protocol.fields`), `task` and `LETTERS`, plus a task's own variables
(Task.render_vars). Whitespace is explicit: no trimming, undefined variables are errors, and the
single newline editors add at the end of a file is dropped (write `{{ "\\n" }}` where a prompt must
end in a newline).

Parts: a template that is exactly `{% block head %}...{% endblock %}{% block question %}...{% endblock %}`
(nothing outside the two blocks) renders as head + question, the same bytes as the whole file.
`head` (the header and the shots) may read of `doc` only `doc.subset`, and not `choice`: it is then
the same for every item of a subset with the same shots, and Task.render renders it once and reuses
it (a head that reads more fails loudly: it is rendered with a doc that has nothing else).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import jinja2

from .paths import prompts_dir

LETTERS = "ABCDEFGHIJ"


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """The one jinja environment (StrictUndefined, no trimming, LETTERS as a global)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(prompts_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=False,
        lstrip_blocks=False,
        autoescape=False,
        auto_reload=False,  # templates do not change while a run renders (saves a stat per render)
    )
    env.globals["LETTERS"] = LETTERS
    return env


def template_source(name: str) -> str:
    """The text of prompts/<name>.jinja."""
    return (prompts_dir() / f"{name}.jinja").read_text(encoding="utf-8")


def template_hash(name: str) -> str:
    """Hash of the template file: changes whenever the prompt could change."""
    return sha256(template_source(name))[:12]


def render(name: str, **variables: Any) -> str:
    """The whole template `name` rendered with `variables`."""
    return environment().get_template(f"{name}.jinja").render(**variables)


PARTS = ("head", "question")


@lru_cache(maxsize=None)
def has_parts(name: str) -> bool:
    """Whether prompts/<name>.jinja is exactly the blocks head then question at its top level (so
    render == render_block(head) + render_block(question))."""
    tree = environment().parse(template_source(name))
    return [(type(node).__name__, getattr(node, "name", None)) for node in tree.body] == [("Block", p) for p in PARTS]


def render_block(name: str, block: str, **variables: Any) -> str:
    """One top-level block of template `name` rendered with `variables`."""
    template = environment().get_template(f"{name}.jinja")
    return "".join(template.blocks[block](template.new_context(variables)))


class SubsetOnly:
    """The `doc` a head block sees: only the subset (anything else is undefined, hence an error)."""

    __slots__ = ("subset",)

    def __init__(self, subset: str):
        self.subset = subset


def sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
