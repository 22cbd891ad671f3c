"""A chat template for Gemma models whose GGUF carries none (gemma-3-270m, the bundled model).

llama-cpp-python falls back to the "llama-2" format when a GGUF has no `tokenizer.chat_template`,
which a Gemma model does not understand. For a gemma* architecture with no template we install
Gemma's turn format instead, through the same Jinja2 path llama-cpp-python uses for GGUF
templates. Unlike llama-cpp-python's built-in "gemma" format, system messages are kept: Gemma has
no system role, so their text opens the first turn, as Gemma 3's own template does.
"""
from __future__ import annotations

import sys

from llama_cpp import llama_chat_format

FALLBACK_FORMAT = "gemma-fallback"

# Content may be a string or a list of OpenAI content parts; only text parts are used.
GEMMA_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m['role'] in ('system', 'developer') -%}"
    "{%- set ns.system = ns.system + text(m['content']) + '\n\n' -%}"
    "{%- endfor -%}"
    "{%- for m in messages if m['role'] not in ('system', 'developer') -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' }}"
    "{%- if loop.first -%}{{ ns.system }}{%- endif -%}"
    "{{ text(m['content']) + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def use_fallback_chat_format(llm, chat_format, chat_handler) -> None:
    """Give a template-less Gemma GGUF Gemma's chat format, unless the caller chose one."""
    if chat_format is not None or chat_handler is not None:
        return
    if "tokenizer.chat_template" in llm.metadata:
        return
    if not llm.metadata.get("general.architecture", "").startswith("gemma"):
        return
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=GEMMA_TEMPLATE,
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
        stop_token_ids=[llm.token_eos()],
    )
    # the same table llama-cpp-python fills from a GGUF's own templates
    llm._chat_handlers[FALLBACK_FORMAT] = formatter.to_chat_handler()
    llm.chat_format = FALLBACK_FORMAT
    if llm.verbose:  # llama-cpp-python has just announced its llama-2 fallback
        print(f"glass-edge: no chat template in this Gemma GGUF; using Gemma's turn format ({FALLBACK_FORMAT})",
              file=sys.stderr)


def render_chat_prompt(llm, messages) -> str:
    """The prompt text the fallback template makes of `messages` (for tests and tools)."""
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=GEMMA_TEMPLATE,
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    return formatter(messages=messages).prompt
