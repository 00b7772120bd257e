"""Run an edgekd build on raw inputs: python predict.py BUILD_DIR INPUT [INPUT ...]

A classifier build takes image files (or texts, for a text classifier) and prints each one's label and
probability; a text-embedding build takes sentences and prints each one's nearest neighbour among the
others, with their cosine similarity. Needs only `pip install 'edgekd[runtime]'`."""
import sys

import numpy as np

import edgekd.runtime
from edgekd.errors import EdgeKDError

if len(sys.argv) < 3:
    sys.exit(__doc__.splitlines()[0])
build, *inputs = sys.argv[1:]
try:
    model = edgekd.runtime.load(build)
    if model.classifies:
        for name, p in zip(inputs, model.predict(inputs)):
            print(f"{name}: {p['label']} ({p['probability']:.4f})")
    elif len(inputs) < 2:
        sys.exit("error: an embedding build compares sentences: give at least two")
    else:
        e = model.predict(inputs)  # (N, D)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T  # (N, N) cosine similarities
        sim[range(len(inputs)), range(len(inputs))] = -2  # not its own neighbour
        for i, text in enumerate(inputs):
            j = int(sim[i].argmax())
            print(f"{text!r} -> {inputs[j]!r} ({sim[i, j]:.3f})")
except EdgeKDError as err:
    sys.exit(f"error: {err}")
