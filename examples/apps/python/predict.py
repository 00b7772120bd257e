"""Run an edgekd build on raw inputs: python predict.py BUILD_DIR INPUT [INPUT ...]

A classifier build takes image files (or texts, for a text classifier) and prints each one's label and
probability; a text-embedding build takes sentences and prints each one's nearest neighbour among the
others, with their cosine similarity. A text-generation build takes prompts and writes each response as
it is generated (greedy, or sampled with --temperature); with --chat it holds a conversation, one line of
yours at a time from the terminal, until an empty line or the end of input. Needs only
`pip install 'edgekd[runtime]'`."""
import argparse
import sys

import numpy as np

import edgekd.runtime
from edgekd.errors import EdgeKDError, InputError


def generate(model, prompts: list[str], opts: dict) -> None:
    for prompt in prompts:
        for piece in model.stream(prompt, **opts):
            print(piece, end="", flush=True)
        print()


def chat(model, opts: dict) -> None:
    """A conversation: each reply reads the turns before it when the build writes prompts with a chat
    template (the oldest turns are dropped when they no longer fit in the build's context); without
    one, each line is a prompt of its own."""
    history: list[dict] = []
    tty = sys.stdin.isatty()
    while True:
        try:
            line = input("> ") if tty else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line.strip():
            return
        text = line.rstrip("\n")
        if not model.chat:
            history = []
        # the first turn is written as the build wrote its prompts: its instruction, a blank line, the prompt
        first = model.instruction and not history
        history.append({"role": "user", "content": f"{model.instruction}\n\n{text}" if first else text})
        while True:
            try:
                stream = model.stream(history, **opts)
                break
            except InputError as err:
                if len(history) < 3:  # this turn alone is refused
                    history.pop()
                    print(f"error: {err}", file=sys.stderr)
                    stream = None
                    break
                del history[:2]  # the oldest exchange
        if stream is None:
            continue
        for piece in stream:
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": stream.text})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("inputs", nargs="*")
    lm = parser.add_argument_group("text-generation builds")
    lm.add_argument("--chat", action="store_true", help="a conversation read from the terminal, line by line")
    lm.add_argument("--max-new-tokens", type=int, default=128)
    lm.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    lm.add_argument("--top-p", type=float, default=1.0)
    lm.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.inputs and not args.chat:
        sys.exit(__doc__.splitlines()[0])
    model = edgekd.runtime.load(args.build)
    if isinstance(model, edgekd.runtime.Generator):
        opts = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "seed": args.seed}
        if args.chat:
            chat(model, opts)
        else:
            generate(model, args.inputs, opts)
    elif args.chat:
        sys.exit(f"error: --chat needs a text-generation build; {args.build} is a {model.task} build")
    elif model.classifies:
        for name, p in zip(args.inputs, model.predict(args.inputs)):
            print(f"{name}: {p['label']} ({p['probability']:.4f})")
    elif len(args.inputs) < 2:
        sys.exit("error: an embedding build compares sentences: give at least two")
    else:
        e = model.predict(args.inputs)  # (N, D)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T  # (N, N) cosine similarities
        sim[range(len(args.inputs)), range(len(args.inputs))] = -2  # not its own neighbour
        for i, text in enumerate(args.inputs):
            j = int(sim[i].argmax())
            print(f"{text!r} -> {args.inputs[j]!r} ({sim[i, j]:.3f})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except EdgeKDError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)
