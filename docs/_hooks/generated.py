"""MkDocs hook: reference sections generated from the code, so they cannot drift.

A page asks for one by a marker on a line of its own:

* ``<!-- omniq:config-reference -->``: every configuration key, from ``OmniQConfig`` (type,
  default), ``omniq.config.env`` (its ``OMNIQ_*`` variable, what is valid in code / YAML and in
  the environment) and the comments in ``omniq.config.settings``.
* ``<!-- omniq:cli-reference -->``: ``omniq --help`` and each subcommand's ``--help``, from
  the argparse parser the command uses.
* ``<!-- omniq:magics-reference -->``: ``%omniq?`` (every subcommand's help), from the magics.

A marker that names no known section fails the build (strict or not).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tokenize
from typing import Any

MARKER = re.compile(r"^<!-- omniq:([a-z-]+) -->$", re.MULTILINE)


def _settings_comments() -> dict[str, str]:
    """``NAME = value  # comment`` lines of omniq.config.settings -> {name: comment}."""
    from omniq.config import settings

    comments: dict[str, str] = {}
    with open(settings.__file__, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    name = None
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            name = tok.string
        elif tok.type == tokenize.COMMENT and name is not None:
            comments[name.lower()] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            name = None
    return comments


def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    if not isinstance(annotation, (str, type)):
        text = repr(annotation)
    return " or ".join(f"`{part.strip()}`" for part in text.replace("typing.", "").split("|"))


def _default_text(field: Any) -> str:
    import msgspec

    if field.default is not msgspec.NODEFAULT:
        return f"`{field.default!r}`"
    if field.default_factory is not msgspec.NODEFAULT:
        return f"`{field.default_factory()!r}`"
    return "(required)"


def _cell(text: str) -> str:
    """Text for a table cell: no pipes, no newlines, and no "{...}" that attr_list would eat."""
    return text.replace("|", "or").replace("\n", " ").replace("{", "&#123;").replace("}", "&#125;")


def config_reference() -> str:
    import msgspec

    from omniq.config.env import RULES, env_var
    from omniq.models.config import OmniQConfig

    comments = _settings_comments()
    hints = {f.name: f.type for f in msgspec.structs.fields(OmniQConfig)}
    import typing

    with contextlib.suppress(Exception):
        hints = typing.get_type_hints(OmniQConfig)
    rows = [
        "| key | environment variable | type | default | valid values | notes |",
        "|---|---|---|---|---|---|",
    ]
    fields = msgspec.structs.fields(OmniQConfig)
    missing = [f.name for f in fields if f.name not in RULES]
    if missing:
        raise RuntimeError(f"config keys without a rule in omniq.config.env: {missing}")
    for f in fields:
        rule = RULES[f.name]
        valid = rule.expected
        if rule.env_text() != rule.expected:
            valid += f"; in the environment: {rule.env_text()}"
        rows.append(
            f"| `{f.name}` | `{env_var(f.name)}` | {_type_text(hints.get(f.name, f.type))} "
            f"| {_default_text(f)} | {_cell(valid)} | {_cell(comments.get(f.name, ''))} |"
        )
    return "\n".join(rows)


def _help_of(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def cli_reference() -> str:
    from omniq.cli import build_parser

    os.environ["COLUMNS"] = "96"  # argparse wraps to the terminal: fixed, so builds agree
    parser = build_parser()
    parts = ["### `omniq`", "", "```text", _help_of(parser), "```"]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        parts += ["", f"### `omniq {name}`", "", "```text", _help_of(sub), "```"]
    return "\n".join(parts)


def magics_reference() -> str:
    os.environ["COLUMNS"] = "96"
    from omniq.notebook.magics import OmniQMagics, _help

    parts: list[str] = []
    for sub in (*OmniQMagics._LINE, "submit"):
        with contextlib.redirect_stdout(io.StringIO()):
            text = _help(getattr(OmniQMagics, f"_cmd_{sub}"))
        magic = "%%omniq" if sub == "submit" else "%omniq"
        parts += [f"### `{magic} {sub}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts).rstrip()


SECTIONS = {
    "config-reference": config_reference,
    "cli-reference": cli_reference,
    "magics-reference": magics_reference,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in SECTIONS:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r}; known: {', '.join(SECTIONS)}")
        return SECTIONS[name]()

    return MARKER.sub(replace, markdown)
