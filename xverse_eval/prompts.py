"""Jinja2 prompt rendering. One template per task, `prompts/<task>.jinja`.

Templates see `doc` (the Sample), `shots` (list of Samples) and `choice` (None for the shared
context, or the index of the choice whose whole scored string is wanted). Whitespace is explicit:
no trimming, undefined variables are errors, and the single newline editors add at the end of a
file is dropped (write `{{ "\\n" }}` where a prompt must end in a newline).
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
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(prompts_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=False,
        lstrip_blocks=False,
        autoescape=False,
    )
    env.globals["LETTERS"] = LETTERS
    return env


def template_source(name: str) -> str:
    return (prompts_dir() / f"{name}.jinja").read_text(encoding="utf-8")


def template_hash(name: str) -> str:
    """Hash of the template file: changes whenever the prompt could change."""
    return sha256(template_source(name))[:12]


def render(name: str, **variables: Any) -> str:
    return environment().get_template(f"{name}.jinja").render(**variables)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
