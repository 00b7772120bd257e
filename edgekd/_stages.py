"""The stage engine: runs a stage or reuses its cached result.

Each stage writes into a temporary folder under <out>/.cache and is renamed into place when it has
finished, with the sha256 of every file it wrote; a stage is reused when the hash of its declared
inputs matches and its files still match their recorded sha256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .artifacts import sha256_file, write_atomic

# Bump when a stage's code changes what it produces or a spec a stage reads gains a field, so old cache
# entries are not reused. A stage's key is the whole of the specs it reads, never a curated subset.
STAGE_VERSION = 7


def _key(*parts) -> str:
    text = json.dumps([STAGE_VERSION, __version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageOut:
    name: str
    key: str
    dir: Path
    meta: dict
    seconds: float
    cached: bool


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Temporary folders and files (`.NAME.tmpPID`) of processes that no longer run: what a killed
    build left. A running build's own are kept (their PID is alive)."""
    gone = []
    for p in Path(folder).glob(".*.tmp*") if Path(folder).is_dir() else []:
        pid = p.name.rpartition(".tmp")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Stages:
    """Runs or reuses stages. Under torch.distributed every rank runs a training stage (DDP needs
    them all), rank 0 alone decides reuse and commits results; the others read rank 0's folder."""

    def __init__(self, cache: Path, *, force: bool, log, fresh: set | None = None):
        import torch.distributed as dist

        self.cache, self.force, self.log, self.done = cache, force, log, []
        # stage folders made in this invocation: reused even under --force (multi-target builds)
        self.fresh = fresh if fresh is not None else set()
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        if self.rank == 0:
            remove_stale_tmp(cache)


    def _agree(self, value: bool) -> bool:
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def _barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def run(self, name: str, fn, *, inputs, after: tuple[StageOut, ...] = ()) -> StageOut:
        """fn(folder, checkpoint) writes the stage's files into `folder`; `checkpoint` is where a
        training stage keeps its per-epoch state, so a killed build resumes there. The cache key is
        derived from the stage's declared `inputs` (settings, file hashes) and the keys of the stages
        it reads (`after`), never assembled by hand."""
        key = _key(name, inputs, [s.key for s in after])
        final = self.cache / f"{name}-{key}"
        ckpt = self.cache / f".{name}-{key}.ckpt"
        # a training stage's checkpoint and those of its extra rounds (edgekd.train._extend)
        ckpts = lambda: self.cache.glob(f".{name}-{key}*.ckpt")  # noqa: E731
        if self.force and final.name not in self.fresh:
            for c in ckpts():  # --force: start this stage over, not from an old checkpoint
                c.unlink(missing_ok=True)
        t0 = time.perf_counter()
        reusable = not self.force or final.name in self.fresh
        if self._agree(reusable and self.rank == 0 and self._valid(final)):
            rec = json.loads((final / "stage.json").read_text())
            # seconds: what the stage cost when it ran; the reuse itself is near-instant
            out = StageOut(name, key, final, rec["meta"], rec.get("seconds", 0.0), True)
            self.log(f"[{name}] reused (cache {final.name})")
        else:
            self.log(f"[{name}] running")
            tmp = self.cache / f".{name}-{key}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            c0 = time.process_time()
            try:
                meta = fn(tmp, ckpt) or {}
                seconds = time.perf_counter() - t0
                # CPU seconds of this process (all its threads): on a shared machine they compare the cost
                # of two stages better than wall-clock seconds, which other processes' load stretches
                cpu = time.process_time() - c0
                if self.rank == 0:
                    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                    write_atomic(tmp / "stage.json", json.dumps({"meta": meta, "files": files, "seconds": seconds,
                                                                 "cpu_seconds": cpu}, indent=1))
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                    for c in ckpts():
                        c.unlink(missing_ok=True)
                self.fresh.add(final.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._barrier()
            out = StageOut(name, key, final, meta, seconds, False)
            self.log(f"[{name}] done in {seconds:.1f} s")
        self.done.append(out)
        return out

    @staticmethod
    def _valid(d: Path) -> bool:
        try:
            rec = json.loads((d / "stage.json").read_text())
            return all(sha256_file(d / n) == h for n, h in rec["files"].items() if n != "stage.json")
        except (OSError, ValueError, KeyError):
            return False


