"""Work a torchrun build splits over its processes instead of repeating it in each: every rank computes
its share of a list of items (rank, rank + world, ...), and every rank receives all the results in the
items' order. Outside torch.distributed the work runs whole, in this process."""

from __future__ import annotations

from typing import Callable

import numpy as np


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _parts(n: int, fn: Callable[[np.ndarray], object]) -> list:
    """Every rank's fn(its indices rank, rank + world, ...), gathered on every rank, in rank order."""
    import torch.distributed as dist

    rank, size = world()
    every: list = [None] * size
    dist.all_gather_object(every, fn(np.arange(rank, n, size)))
    return every


def split_gather(n: int, fn: Callable[[np.ndarray], list]) -> list:
    """fn(indices) -> one result per index, in order. Returns the n results of fn over range(n), each
    computed by one rank (all_gather_object: results are pickled, so keep them to arrays and lists)."""
    size = world()[1]
    if size == 1:
        return list(fn(np.arange(n)))
    out: list = [None] * n
    for r, part in enumerate(_parts(n, lambda idx: list(fn(idx)))):
        out[r::size] = part
    return out


def split_rows(n: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """fn(indices) -> an array whose first axis is those rows. Returns the n rows in order, each row
    computed by one rank (a teacher's outputs on a dataset, say)."""
    size = world()[1]
    if size == 1:
        return fn(np.arange(n))
    every = _parts(n, lambda idx: np.asarray(fn(idx)))
    out = np.empty((n, *every[0].shape[1:]), dtype=every[0].dtype)
    for r, part in enumerate(every):
        out[r::size] = part
    return out
