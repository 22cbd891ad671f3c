"""`glass-edge run`: load a model, generate from a prompt, print the text and llama.cpp-style timings."""
from __future__ import annotations

import sys

from .default_model import DefaultModelError, default_model_path
from .errors import UserError
from .gguf_check import ModelFileError, check_model_file


def resolve_model(path):
    try:
        model = str(default_model_path()) if path is None else path
        check_model_file(model)
        return model
    except (DefaultModelError, ModelFileError) as e:
        raise UserError(str(e)) from None


def load(model_path: str, *, density: float, method: str, threads, ctx_size: int, seed: int, verbose: bool,
         lam=None, prior=None, **llama_kwargs):
    from .llama import GlassLlama
    from .prior import PriorError
    kwargs = dict(n_ctx=ctx_size, seed=seed, verbose=verbose, density=density, method=method, lam=lam,
                  prior=prior, **llama_kwargs)
    if threads:
        kwargs.update(n_threads=threads, n_threads_batch=threads)
    try:
        return GlassLlama(model_path, **kwargs)
    except PriorError as e:
        raise UserError(str(e)) from None
    except ValueError as e:  # llama-cpp-python reports load failures as ValueError
        raise UserError(f"cannot load {model_path}: {e}") from None


def print_timings(llm, out=sys.stderr) -> None:
    t = llm.timings
    print(f"\nprompt eval time = {t.prompt_ms:10.2f} ms / {t.prompt_tokens:5d} tokens "
          f"({t.prompt_ms / max(t.prompt_tokens, 1):8.2f} ms per token, {t.prompt_tps:8.2f} tokens per second)", file=out)
    print(f"       eval time = {t.eval_ms:10.2f} ms / {t.eval_tokens:5d} runs   "
          f"({t.eval_ms / max(t.eval_tokens, 1):8.2f} ms per token, {t.eval_tps:8.2f} tokens per second)", file=out)
    print(f"      mask time = {t.mask_ms:10.2f} ms  (method {llm.method}, density {llm.density:g})", file=out)


def run(args) -> int:
    model = resolve_model(args.model)
    llm = load(model, density=args.density, method=args.method, threads=args.threads,
               ctx_size=args.ctx_size, seed=args.seed, verbose=args.verbose, lam=args.lam, prior=args.prior)
    n_prompt = len(llm.tokenize(args.prompt.encode("utf-8")))
    if n_prompt + args.n_predict > llm.n_ctx():
        raise UserError(f"prompt ({n_prompt} tokens) + -n {args.n_predict} exceed the context size "
                        f"{llm.n_ctx()}; raise -c")
    sys.stdout.write(args.prompt)
    stream = llm.create_completion(args.prompt, max_tokens=args.n_predict, temperature=args.temp,
                                   top_k=args.top_k, top_p=args.top_p, seed=args.seed if args.seed >= 0 else None,
                                   stream=True)
    for chunk in stream:
        sys.stdout.write(chunk["choices"][0]["text"])
        sys.stdout.flush()
    sys.stdout.write("\n")
    print_timings(llm)
    return 0
