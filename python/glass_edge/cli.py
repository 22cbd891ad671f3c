"""glass-edge command line: argparse subcommands only; each calls one function elsewhere.

Every subcommand has an `_add_<name>(sub)` function below and an entry in COMMANDS naming the
module and function that does the work (imported only when that command runs, so that --help and
argument errors stay fast and never load llama.cpp).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .selection import DEFAULT_METHOD, METHODS


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"glass-edge: error: {message}\n")


# ----------------------------------------------------------------------------------------------
# argument types: each rejects bad input with a one-line message
# ----------------------------------------------------------------------------------------------

def density_arg(text: str) -> float:
    try:
        d = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be a number in (0, 1], got {text!r}") from None
    if not (0.0 < d <= 1.0):
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], got {text}")
    return d


def densities_arg(text: str) -> list:
    """A comma-separated list of densities, e.g. 0.25,0.5,1.0."""
    return [density_arg(t.strip()) for t in text.split(",") if t.strip()] or [density_arg("")]


def positive_ints_arg(text: str) -> list:
    """A comma-separated list of positive whole numbers, e.g. 128,512."""
    return [positive_int_arg(t.strip()) for t in text.split(",") if t.strip()] or [positive_int_arg("")]


def method_arg(text: str) -> str:
    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose one of {', '.join(METHODS)}")
    return text


def methods_arg(text: str) -> list:
    return [method_arg(t.strip()) for t in text.split(",") if t.strip()] or [method_arg("")]


def lambda_arg(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"lambda must be a number in [0, 1], got {text!r}") from None
    if not (0.0 <= x <= 1.0):
        raise argparse.ArgumentTypeError(f"lambda must be in [0, 1], got {text}")
    return x


def positive_int_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def add_model_arg(p, required: bool = False) -> None:
    if required:
        p.add_argument("model", help="GGUF model file")
    else:
        p.add_argument("model", nargs="?", help="GGUF model (default: the bundled gemma-3-270m)")


def add_sparsity_args(p, density: float = 0.5) -> None:
    p.add_argument("--density", type=density_arg, default=density, help="fraction of FFN neurons kept, (0, 1]")
    p.add_argument("--method", type=method_arg, default=DEFAULT_METHOD,
                   help=f"one of {', '.join(METHODS)} (default {DEFAULT_METHOD}: GLASS, the prompt's ranking "
                        "aggregated with the model's global prior, computed once on first use if the model has none)")
    p.add_argument("--lambda", dest="lam", type=lambda_arg, default=None,
                   help="GLASS weight of the prompt's ranking against the global prior, [0, 1]")
    p.add_argument("--prior", default=None, help="take the global prior from this calibrated GGUF")


def add_llama_args(p) -> None:
    p.add_argument("-t", "--threads", type=positive_int_arg, default=None)
    p.add_argument("-c", "--ctx-size", type=positive_int_arg, default=2048)
    p.add_argument("-s", "--seed", type=int, default=-1)
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


# ----------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------

def _add_run(sub) -> None:
    run = sub.add_parser("run", help="generate text from a prompt")
    add_model_arg(run)
    run.add_argument("-p", "--prompt", default="The three most useful things to know about the ocean are")
    run.add_argument("-n", "--n-predict", type=positive_int_arg, default=128, help="tokens to generate")
    add_sparsity_args(run)
    add_llama_args(run)
    run.add_argument("--temp", type=float, default=0.8)
    run.add_argument("--top-k", type=int, default=40)
    run.add_argument("--top-p", type=float, default=0.95)


def _add_calibrate(sub) -> None:
    cal = sub.add_parser("calibrate", help="compute a model's global prior and store it in a copy of the model")
    add_model_arg(cal)
    cal.add_argument("-o", "--output", required=True, help="the calibrated copy to write (.gguf)")
    cal.add_argument("--source", nargs="+", default=None, metavar="nps|FILE",
                     help="nps (default: the model's own samples), or text files ('builtin': Python's docs)")
    cal.add_argument("--samples", type=positive_int_arg, default=64, help="NPS samples / corpus chunks")
    cal.add_argument("--tokens", type=positive_int_arg, default=128, help="tokens per sample / chunk")
    cal.add_argument("-t", "--threads", type=positive_int_arg, default=None)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _add_info(sub) -> None:
    inf = sub.add_parser("info", help="describe a model: FFN shapes and types, glass.* metadata")
    add_model_arg(inf)


def _add_synth(sub) -> None:
    from .synth_presets import PRESETS, QUANTS
    syn = sub.add_parser("synth", help="write a random-weight GGUF with a real model's shapes (for benchmarks)")
    syn.add_argument("--preset", required=True, choices=list(PRESETS), help="model shapes to copy")
    syn.add_argument("--quant", default="q4_k_m", choices=list(QUANTS), help="llama.cpp quantization (default q4_k_m)")
    syn.add_argument("-o", "--output", required=True, help="GGUF file to write")
    syn.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    syn.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="decode/prefill speed and memory: stock llama.cpp vs glass-edge per density")
    add_model_arg(b, required=True)
    b.add_argument("--densities", type=densities_arg, default=[0.25, 0.4, 0.5, 1.0],
                   help="comma-separated densities (default 0.25,0.4,0.5,1.0)")
    b.add_argument("--method", type=method_arg, default="griffin",
                   help=f"one of {', '.join(METHODS)} (default griffin: speed does not depend on the method, and it needs no prior)")
    b.add_argument("--lambda", dest="lam", type=lambda_arg, default=None,
                   help="GLASS weight of the prompt's ranking against the global prior, [0, 1]")
    b.add_argument("--prior", default=None, help="take the global prior from this calibrated GGUF")
    b.add_argument("-p", "--n-prompt", type=positive_int_arg, default=32, help="prompt tokens before decoding")
    b.add_argument("-n", "--n-gen", type=positive_int_arg, default=128, help="tokens decoded per repetition")
    b.add_argument("--pp-sizes", type=positive_ints_arg, default=[128, 512],
                   help="extra prompt sizes for prefill speed (default 128,512)")
    b.add_argument("-t", "--threads", type=positive_int_arg, default=None, help="threads (default: all cores)")
    b.add_argument("-r", "--repetitions", type=positive_int_arg, default=5)
    b.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    b.add_argument("--no-rss", action="store_true", help="skip the peak-memory subprocesses")
    b.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    b.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="quality against dense: KL, top-1, perplexity, ROUGE-L per method and density")
    add_model_arg(ev)
    ev.add_argument("--prompts", required=True, metavar="FILE",
                    help="JSON Lines with a \"prompt\" field per line, or plain text, one prompt a line")
    ev.add_argument("--max-tokens", type=positive_int_arg, default=256,
                    help="length of the dense reference continuation and of every free run (default 256)")
    ev.add_argument("--densities", type=densities_arg, default=[0.25, 0.4, 0.5, 0.75],
                    help="comma-separated densities (default 0.25,0.4,0.5,0.75)")
    ev.add_argument("--methods", type=methods_arg, default=list(METHODS),
                    help=f"comma-separated methods (default {','.join(METHODS)}); dense runs once, at density 1")
    ev.add_argument("--lambda", dest="lam", type=lambda_arg, default=None,
                    help="GLASS weight of the prompt's ranking against the global prior, [0, 1]")
    ev.add_argument("--prior", default=None, help="take the global prior from this calibrated GGUF")
    ev.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="write the results as JSON")
    ev.add_argument("--plot", default=None, metavar="OUT.png", help="plot KL against density (needs matplotlib)")
    ev.add_argument("--draft", type=int, choices=range(0, 65), default=16, metavar="N",
                    help="free runs check up to N looked-up tokens per eval (0: one token per eval; default 16)")
    ev.add_argument("-j", "--jobs", type=positive_int_arg, default=None,
                    help="worker processes, each taking whole prompts (default: one per core)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.add_argument("-t", "--threads", type=positive_int_arg, default=None,
                    help="threads per job (default: cores / jobs)")
    ev.add_argument("-c", "--ctx-size", type=positive_int_arg, default=2048,
                    help="context size; must hold the longest prompt + --max-tokens (default 2048)")
    ev.add_argument("-s", "--seed", type=int, default=-1,
                    help="random masks use seed + prompt index (default: the prompt index)")
    ev.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def port_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a whole number, got {text!r}") from None
    if not (0 <= v <= 65535):
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {v}")
    return v


def _add_chat(sub) -> None:
    ch = sub.add_parser("chat", help="interactive terminal chat (the model's chat template; /help for commands)")
    add_model_arg(ch)
    add_sparsity_args(ch)
    add_llama_args(ch)
    ch.add_argument("-n", "--n-predict", type=positive_int_arg, default=256, help="max tokens per reply")
    ch.add_argument("--temp", type=float, default=0.8)
    ch.add_argument("--top-k", type=int, default=40)
    ch.add_argument("--top-p", type=float, default=0.95)
    ch.add_argument("--system", default=None, metavar="PROMPT", help="system prompt of the conversation")


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    add_model_arg(sv)
    add_sparsity_args(sv)
    add_llama_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=port_arg, default=8080, help="port (default 8080; 0 picks a free one)")
    sv.add_argument("--alias", default=None, help="model id in /v1/models and responses (default: file name)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


# command name -> (parser builder, module, function taking the parsed args and returning an exit code)
COMMANDS = {
    "run": (_add_run, "run", "run"),
    "synth": (_add_synth, "synth", "synth"),
    "bench": (_add_bench, "bench", "bench"),
    "calibrate": (_add_calibrate, "calibrate", "calibrate"),
    "info": (_add_info, "info", "info"),
    "eval": (_add_eval, "evaluate", "evaluate"),
    "chat": (_add_chat, "chat", "chat"),
    "serve": (_add_serve, "server", "serve"),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="glass-edge", description="Sparse-FFN (GLASS) llama.cpp decode on CPUs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add, _module, _function in COMMANDS.values():
        add(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import UserError
    _add, module, function = COMMANDS[args.command]
    try:
        return getattr(importlib.import_module(f".{module}", __package__), function)(args)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"glass-edge: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
