"""Prompt files for `glass-edge eval`: JSON Lines with a "prompt" field, or plain text, one prompt a line.

The kind is decided per file: if the first non-blank line starts with "{", every non-blank line
must be a JSON object with a string "prompt"; otherwise every non-blank line is one prompt.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError


def load_prompts(path) -> list:
    """The prompts of `path`, in file order; blank lines are skipped. Bad input raises UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {path}: {e}") from None
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise UserError(f"prompts file {path} has no prompts")
    if not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    return [_jsonl_prompt(path, n, line) for n, line in lines]


def _jsonl_prompt(path: Path, line_no: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {line_no}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise UserError(f"{path} line {line_no}: expected an object with a string \"prompt\" field")
    if not record["prompt"].strip():
        raise UserError(f"{path} line {line_no}: empty prompt")
    return record["prompt"]
