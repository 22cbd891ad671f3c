"""`glass-edge chat`: an interactive terminal chat with the model's chat template.

Each user turn goes through GlassLlama.create_chat_completion with the whole conversation.
llama-cpp-python keeps the KV cache of the earlier turns (the new prompt extends it), so only the
new turn is prefilled; GlassLlama adds that turn's FFN statistics to the ones it kept and selects a
new mask from the sum (and the global prior, for the GLASS methods). See docs/chat.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .selection import NEEDS_PRIOR, check_density, check_method

HELP = """commands:
  /density X   fraction of FFN neurons kept, (0, 1], from the next reply on
  /method M    neuron selection: dense, griffin, global, a-glass, i-glass, random
  /reset       forget the conversation (the system prompt stays)
  /stats       settings, context use, the last reply's speed and mask
  /help        this list
Ctrl-C stops a reply (the chat goes on); Ctrl-D or /quit leaves."""


class ChatSession:
    """The conversation and the slash commands; `reply` streams one answer to `out`."""

    def __init__(self, llm, *, system=None, max_tokens=256, temperature=0.8, top_k=40, top_p=0.95,
                 out=sys.stdout, err=sys.stderr):
        self.llm = llm
        self.system = system
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.out, self.err = out, err
        self.messages: list = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # ------------------------------------------------------------------------------------------
    # commands
    # ------------------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a /command; False means leave the chat."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.reset()
            self.llm.reset()  # the next turn is prefilled from the start, with fresh statistics
            self.say("(conversation cleared)")
        elif name == "/stats":
            self.say(self.stats())
        elif name == "/density":
            try:
                self.llm.density = check_density(arg)
                self.say(f"(density {self.llm.density:g} from the next reply on)")
            except (ValueError, TypeError):
                self.say(f"usage: /density X with 0 < X <= 1 (got {arg!r})")
        elif name == "/method":
            self.set_method(arg)
        else:
            self.say(f"unknown command {name}; /help lists them")
        return True

    def set_method(self, method: str) -> None:
        try:
            check_method(method)
            if method in NEEDS_PRIOR:
                self.llm.global_prior()  # may compute it once (a progress bar shows)
        except ValueError as e:  # an unknown name, or a prior that cannot be had
            self.say(f"method not changed: {e}")
            return
        except KeyboardInterrupt:
            self.say("(interrupted; method not changed)")
            return
        self.llm.method = method
        self.say(f"(method {method} from the next reply on)")

    def stats(self) -> str:
        llm, t = self.llm, self.llm.timings
        turns = sum(1 for m in self.messages if m["role"] == "user")
        lines = [f"density {llm.density:g} · method {llm.method} · lambda {llm.lam:g} · "
                 f"chat format {llm.chat_format}",
                 f"context: {llm.n_tokens} of {llm.n_ctx()} tokens · {turns} user turn(s)"]
        if t.prompt_tokens or t.eval_tokens:
            lines.append(f"last reply: prompt {t.prompt_tokens} tokens at {t.prompt_tps:.1f} tokens/s, "
                         f"{t.eval_tokens} decoded at {t.eval_tps:.1f} tokens/s, mask {t.mask_ms:.1f} ms")
        kept = llm.mask_densities()
        if kept:
            overlap = llm.mask_overlap()
            lines.append(f"mask: {sum(kept) / len(kept):.3f} of FFN neurons kept per layer (mean)"
                         + (f" · overlap with the previous mask {sum(overlap) / len(overlap):.3f}" if overlap else ""))
        rows = getattr(llm, "_stats_rows", None)
        if rows:
            lines.append(f"prompt statistics cover {max(rows)} prefilled tokens of this conversation")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    # one turn
    # ------------------------------------------------------------------------------------------

    def reply(self, text: str) -> str:
        """Send one user turn, stream the answer; Ctrl-C ends it early. Returns the reply text."""
        self.messages.append({"role": "user", "content": text})
        pieces, stopped = [], False
        stream = self.llm.create_chat_completion(self.messages, stream=True, **self.sampling)
        try:
            for chunk in stream:
                piece = chunk["choices"][0]["delta"].get("content") or ""
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stopped = True
        except ValueError as e:  # the conversation no longer fits the context
            self.messages.pop()
            self.out.write("\n")
            self.say(f"({e}; /reset starts a new conversation, or raise -c)")
            return ""
        finally:
            stream.close()
        answer = "".join(pieces)
        self.messages.append({"role": "assistant", "content": answer})
        self.out.write("\n")
        self.out.flush()
        t = self.llm.timings
        self.say(f"[{'stopped · ' if stopped else ''}{t.eval_tokens} tokens at {t.eval_tps:.1f} tokens/s · "
                 f"prompt {t.prompt_tokens} tokens at {t.prompt_tps:.1f} tokens/s · mask {t.mask_ms:.1f} ms]")
        if self.llm.n_ctx() - self.llm.n_tokens < 32:
            self.say("(the context is nearly full: /reset starts a new conversation)")
        return answer


def _read_line(prompt: str):
    """One line of input; None at end of input (Ctrl-D)."""
    try:
        return input(prompt)
    except EOFError:
        return None


def chat_loop(session: ChatSession, prompt: str = "> ") -> int:
    while True:
        try:
            line = _read_line(prompt)
        except KeyboardInterrupt:  # at the prompt Ctrl-C only clears the line
            session.out.write("\n")
            session.say("(Ctrl-D or /quit leaves)")
            continue
        if line is None:
            session.out.write("\n")
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        session.reply(line)


def chat(args) -> int:
    from .run import load, resolve_model

    model = resolve_model(args.model)
    llm = load(model, density=args.density, method=args.method, threads=args.threads, ctx_size=args.ctx_size,
               seed=args.seed, verbose=args.verbose, lam=args.lam, prior=args.prior)
    session = ChatSession(llm, system=args.system, max_tokens=args.n_predict, temperature=args.temp,
                          top_k=args.top_k, top_p=args.top_p)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 -- line editing and history for input()
        except ImportError:
            pass
    session.say(f"glass-edge chat · {Path(model).stem} · density {llm.density:g} · method {llm.method} · "
                f"chat format {llm.chat_format}\n/help lists the commands; Ctrl-C stops a reply, Ctrl-D leaves.")
    if llm.chat_format == "llama-2" and "tokenizer.chat_template" not in llm.metadata:
        session.say("(this model has no chat template; llama-cpp-python's llama-2 format is used)")
    return chat_loop(session)
