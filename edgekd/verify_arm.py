"""Accuracy of an INT8 model on real aarch64 onnxruntime kernels, run under user-mode emulation.

Integer kernels differ between x86 and ARM (x86 without VNNI can saturate u8*s8 products, ARM does
not), so host accuracy alone does not say what a phone will compute. An arm64 Debian root with
python3.11 and the aarch64 onnxruntime wheel of the host's version runs the model under
`qemu-aarch64-static -cpu <model>`. Outputs only: emulated timing is 100-700x off and never reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgeKDError, InputError

PYTHON = "3.11"  # bookworm's python; the aarch64 wheels are picked for it
SUITE = "bookworm"
NOTE = "outputs only; timing under emulation is not measured"
TOOLS_HINT = "apt-get install qemu-user-static debootstrap"

# MIDR_EL1 of the CPU models qemu-aarch64 7.x emulates (what Linux shows in /proc/cpuinfo).
# `-cpu max` is left out on purpose: it enables features no real core has together.
CPUS = {
    "cortex-a35": 0x410FD040, "cortex-a53": 0x410FD034, "cortex-a57": 0x411FD070,
    "cortex-a72": 0x410FD083, "cortex-a76": 0x414FD0B1, "neoverse-n1": 0x414FD0C1, "a64fx": 0x461F0010,
}
# Linux arm64 AT_HWCAP / AT_HWCAP2 bit names, in bit order (arch/arm64/kernel/cpuinfo.c).
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 "
          "sme_f16f32 sme_b16f32 sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16").split()

# Run by the emulated python: the same session settings as edgekd.backends' onnxruntime runner.
_WORKER = """\
import sys
site, model, inputs, outputs, batch = sys.argv[1:6]
sys.path.insert(0, site)
import platform

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
name, b = sess.get_inputs()[0].name, int(batch)
x = np.load(inputs)
np.save(outputs, np.concatenate([sess.run(None, {name: x[i:i + b]})[0] for i in range(0, len(x), b)]))
print(ort.__version__, platform.machine())
"""


@dataclass
class ArmEnv:
    root: Path  # arm64 Debian root: the emulator's -L prefix
    site: Path  # aarch64 onnxruntime + numpy, put on the emulated python's sys.path
    qemu: str
    onnxruntime: str

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{PYTHON}"

    def command(self, cpu: str, *args: str) -> list[str]:
        return [self.qemu, "-cpu", cpu, "-L", str(self.root), str(self.python), "-I", *args]


def cache_dir(root: Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("EDGEKD_ARM_ROOT") or Path.home() / ".cache" / "edgekd" / "arm64")


def _host_ort() -> str:
    from importlib.metadata import version

    return version("onnxruntime")


def _site_dir(cache: Path) -> Path:
    return cache / f"site-cp{PYTHON.replace('.', '')}-onnxruntime-{_host_ort()}"


def arm_available(root: Path | None = None, *, prepared: bool = False) -> bool:
    """True when verify_arm can run: the emulator is on PATH and either the ARM root is prepared
    (prepared=True asks for that: no network, no minutes of set-up) or debootstrap can make it."""
    if not shutil.which("qemu-aarch64-static"):
        return False
    cache = cache_dir(root)
    ready = (cache / "rootfs" / "usr" / "bin" / f"python{PYTHON}").is_file() and _site_dir(cache).is_dir()
    return ready or (not prepared and shutil.which("debootstrap") is not None)


@contextmanager
def _lock(path: Path):
    """One process at a time builds the root or rewrites its cpuinfo."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:300]


def arm_environment(root: Path | None = None, *, log=None) -> ArmEnv:
    """The cached arm64 root and aarch64 wheels under `root` (default ~/.cache/edgekd/arm64, or
    $EDGEKD_ARM_ROOT), made on first use (about a minute; 320 MB on disk). Each part is
    built in a temporary folder and renamed into place, so a killed run leaves nothing half-made."""
    log = log or (lambda m: None)
    cache = cache_dir(root)
    qemu = shutil.which("qemu-aarch64-static")
    rootfs, site = cache / "rootfs", _site_dir(cache)
    missing = [t for t, ok in (("qemu-aarch64-static", qemu),
                               ("debootstrap", rootfs.is_dir() or shutil.which("debootstrap"))) if not ok]
    if missing:
        raise EdgeKDError(f"ARM verification needs qemu-user-static and debootstrap ({', '.join(missing)} "
                          f"not found on PATH): {TOOLS_HINT}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeKDError(f"cannot create the ARM cache folder '{cache}' ({e.strerror}); "
                          "set EDGEKD_ARM_ROOT to a writable folder") from None
    with _lock(cache / ".lock"):
        for stale in cache.glob(".*.tmp*"):  # left by a killed run; nobody else builds while we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        env = ArmEnv(rootfs, site, qemu, _host_ort())
        if not rootfs.is_dir():
            _make_root(rootfs, qemu, log)
        if not site.is_dir():
            _make_site(env, log)
    return env


def _make_root(rootfs: Path, qemu: str, log) -> None:
    """debootstrap's first stage only (no chroot, no second stage): it extracts the essential
    packages and downloads python3.11's; unpacking those is all python3.11 needs to run."""
    import time

    tmp = rootfs.with_name(f".{rootfs.name}.tmp{os.getpid()}")
    t0 = time.perf_counter()
    log(f"[arm] creating an arm64 Debian {SUITE} root with python{PYTHON} in {rootfs} (about a minute)")
    try:
        proc = subprocess.run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                               f"--include=python{PYTHON}", SUITE, str(tmp)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            hint = "; debootstrap must run as root" if os.geteuid() != 0 else ""
            raise EdgeKDError(f"debootstrap of the arm64 root failed: {_tail(proc.stdout + proc.stderr)}{hint}")
        # In a container debootstrap links ROOT/proc to the host's /proc; the emulator must see our own
        # cpuinfo there. ROOT/dev's nodes would shadow the host's /dev (and fail on nodev mounts).
        for d in ("proc", "dev"):
            p = tmp / d
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
            p.mkdir()
        base = set((tmp / "debootstrap" / "base").read_text().split())
        for line in (tmp / "debootstrap" / "debpaths").read_text().splitlines():
            pkg, _, rel = line.partition(" ")
            if pkg in base:  # python3.11 and what it depends on beyond the essential set
                _unpack_deb(tmp / rel.lstrip("/"), tmp)
        for done in ("var/cache/apt/archives", "var/lib/apt/lists"):  # the .debs and package index: 85 MB
            shutil.rmtree(tmp / done, ignore_errors=True)
        _write_cpuinfo(tmp, qemu, "cortex-a76")
        proc = subprocess.run([qemu, "-cpu", "cortex-a76", "-L", str(tmp), str(tmp / "usr" / "bin" / f"python{PYTHON}"),
                               "-I", "-c", "import platform; print(platform.machine())"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or proc.stdout.strip() != "aarch64":
            raise EdgeKDError(f"the emulated python{PYTHON} does not start: {_tail(proc.stderr or proc.stdout)}")
        os.rename(tmp, rootfs)
    except subprocess.TimeoutExpired:
        raise EdgeKDError("creating the arm64 root timed out; check the network and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[arm] root ready in {time.perf_counter() - t0:.0f} s")


def _unpack_deb(deb: Path, root: Path) -> None:
    """Like debootstrap's own extraction, but keeping the merged-/usr links (lib -> usr/lib): a plain
    `dpkg-deb -x` replaces them with folders and the emulator then finds no dynamic loader."""
    if not shutil.which("dpkg-deb"):
        raise EdgeKDError(f"unpacking the arm64 root needs dpkg-deb: {TOOLS_HINT}")
    src = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-C", str(root), "--keep-directory-symlink", "-xf", "-"],
                         stdin=src.stdout, capture_output=True, text=True)
    src.stdout.close()
    if src.wait() != 0 or tar.returncode != 0:
        raise EdgeKDError(f"unpacking {deb.name} into the arm64 root failed: {_tail(tar.stderr)}")


def _make_site(env: ArmEnv, log) -> None:
    """aarch64 wheels of the host's onnxruntime version (and numpy), installed from the host's pip."""
    import sys

    tmp = env.site.with_name(f".{env.site.name}.tmp{os.getpid()}")
    log(f"[arm] installing aarch64 onnxruntime=={env.onnxruntime} and numpy into {env.site}")
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--platform", "manylinux_2_28_aarch64", "--python-version", PYTHON,
                               "--implementation", "cp", "--only-binary=:all:", "--target", str(tmp),
                               f"onnxruntime=={env.onnxruntime}", "numpy"],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            errs = [line for line in proc.stderr.splitlines() if "ERROR" in line] or [proc.stderr]
            raise EdgeKDError(f"installing aarch64 onnxruntime=={env.onnxruntime} failed: {_tail(errs[0])}")
        os.rename(tmp, env.site)
    except subprocess.TimeoutExpired:
        raise EdgeKDError("downloading the aarch64 wheels timed out; check the network and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_cpu(cpu: str) -> None:
    if cpu == "max":
        raise InputError("--cpu max is refused: it mixes features no real core has (INT8 results went wrong "
                         f"under it); name a real core: {', '.join(CPUS)}")
    if cpu not in CPUS:
        raise InputError(f"unknown ARM CPU '{cpu}'; choose one of {', '.join(CPUS)}")


def _write_cpuinfo(root: Path, qemu: str, cpu: str) -> None:
    """ROOT/proc/cpuinfo for `cpu`: onnxruntime's CPU detection segfaults on the x86 host's file, and
    a file naming another core than `-cpu` makes it pick kernels the emulated core lacks (SIGILL).
    The feature list is what the emulator itself passes in AT_HWCAP for that core."""
    proc = subprocess.run([qemu, "-cpu", cpu, "-L", str(root), "-E", "LD_SHOW_AUXV=1", str(root / "usr" / "bin" / "true")],
                          capture_output=True, text=True, timeout=120)
    aux = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    try:
        hw, hw2 = int(aux["AT_HWCAP"].strip(), 16), int(aux.get("AT_HWCAP2", "0").strip(), 16)
    except (KeyError, ValueError):
        raise EdgeKDError(f"the emulator reports no features for -cpu {cpu}: {_tail(proc.stderr or proc.stdout)}") from None
    feats = [n for i, n in enumerate(HWCAP) if hw >> i & 1] + [n for i, n in enumerate(HWCAP2) if hw2 >> i & 1]
    midr = CPUS[cpu]
    block = (f"Features\t: {' '.join(feats)}\nCPU implementer\t: {midr >> 24:#x}\nCPU architecture: 8\n"
             f"CPU variant\t: {midr >> 20 & 0xF:#x}\nCPU part\t: {midr >> 4 & 0xFFF:#05x}\nCPU revision\t: {midr & 0xF}\n\n")
    text = "".join(f"processor\t: {i}\n{block}" for i in range(os.cpu_count() or 1))
    proc_dir = root / "proc"
    if proc_dir.is_symlink():  # never write through to the host's /proc
        proc_dir.unlink()
    proc_dir.mkdir(exist_ok=True)
    dst = proc_dir / "cpuinfo"
    if not dst.is_file() or dst.read_text() != text:
        tmp = proc_dir / f".cpuinfo.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, dst)


def emulator_version(qemu: str) -> str:
    import re

    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return f"qemu-aarch64-static {m.group(1) if m else 'unknown'}"


def _batches(run, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def verify_arm(model_path: Path, inputs: np.ndarray, labels: np.ndarray | None, *, cpu: str = "cortex-a76",
               env: ArmEnv | None = None, batch: int = 256, log=None) -> dict:
    """The model's outputs on host onnxruntime (x86) and on emulated `cpu` with the aarch64 build of
    the same onnxruntime version, same session settings; accuracies, top-1 agreement, max |diff|."""
    import tempfile

    from . import backends

    model_path = Path(model_path)
    _check_cpu(cpu)
    if not model_path.is_file() or model_path.suffix not in _onnxruntime_extensions():
        raise InputError(f"'{model_path}' is not a {' or '.join(_onnxruntime_extensions())} model file; ARM verification runs "
                         "onnxruntime")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if labels is not None and len(labels) != len(x):
        raise InputError(f"{len(labels)} labels for {len(x)} inputs")
    if len(x) == 0:
        raise InputError("no inputs to verify on")
    env = env or arm_environment(log=log)
    x86 = _batches(backends.load(model_path, threads=1), x, batch)
    with tempfile.TemporaryDirectory(prefix="edgekd-arm-") as d:
        worker, xin, yout = Path(d) / "worker.py", Path(d) / "x.npy", Path(d) / "y.npy"
        worker.write_text(_WORKER)
        np.save(xin, x)
        with _lock(env.root.parent / f".run-{env.root.name}.lock"):  # cpuinfo must stay ours for the run
            _write_cpuinfo(env.root, env.qemu, cpu)
            try:
                proc = subprocess.run(env.command(cpu, str(worker), str(env.site), str(model_path.resolve()),
                                                  str(xin), str(yout), str(batch)),
                                      capture_output=True, text=True, timeout=3600,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
            except subprocess.TimeoutExpired:
                raise EdgeKDError(f"'{model_path.name}' ran over an hour under the ARM emulator; "
                                  "verify fewer samples (--samples)") from None
        if proc.returncode != 0 or not yout.is_file():
            hint = (f" (a kernel the emulated {cpu} lacks: /proc/cpuinfo and -cpu disagree)"
                    if "signal 4" in proc.stderr or "Illegal instruction" in proc.stderr else "")
            raise EdgeKDError(f"running '{model_path.name}' on emulated {cpu} failed: {_tail(proc.stderr)}{hint}")
        arm = np.load(yout)
        arm_ort, machine = (proc.stdout.split() + ["?", "?"])[:2]
    if machine != "aarch64" or arm_ort != env.onnxruntime:
        raise EdgeKDError(f"the emulated run used onnxruntime {arm_ort} on {machine}, not "
                          f"{env.onnxruntime} on aarch64; delete {env.site} and run again")
    if arm.shape != x86.shape:
        raise EdgeKDError(f"ARM outputs have shape {arm.shape}, x86 outputs {x86.shape}")

    def acc(y):
        return None if labels is None else float((y.argmax(1) == np.asarray(labels)).mean())

    return {
        "cpu": cpu,
        "emulator": emulator_version(env.qemu),
        "onnxruntime": env.onnxruntime,
        "samples": int(len(x)),
        "x86_accuracy": acc(x86),
        "arm_accuracy": acc(arm),
        "top1_agreement_x86_arm": float((x86.argmax(1) == arm.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(x86.astype(np.float64) - arm).max()),
        "note": NOTE,
    }


def verify_build(build_dir: Path, *, cpu: str = "cortex-a76", samples: int | None = None,
                 root: Path | None = None, log=None) -> dict:
    """verify_arm on a build's deliverable and its test split, rebuilt from recipe.lock.toml (a build
    does not store its data); writes BUILD_DIR/arm_verification.json."""
    from .data import load_data
    from .recipe import load_recipe

    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise InputError(f"build folder '{build_dir}' does not exist; give one such as build/mobile-int8")
    try:
        manifest = json.loads((build_dir / "manifest.json").read_text())
        model = build_dir / manifest["model"]
    except FileNotFoundError:
        raise InputError(f"'{build_dir}' has no manifest.json; is it a folder written by edgekd build?") from None
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise InputError(f"'{build_dir / 'manifest.json'}' is unreadable or lacks 'model' ({e!r}); rebuild") from None
    fmt, precision = manifest.get("format"), manifest.get("precision")
    if model.suffix not in _onnxruntime_extensions():
        raise InputError(f"the deliverable '{model.name}' is {fmt or 'not ONNX'}; ARM verification runs ONNX "
                         "Runtime's aarch64 kernels and needs an ONNX/.ort INT8 build (e.g. target=mobile-int8)")
    if precision != "int8":
        raise InputError(f"the deliverable '{model.name}' is {precision}, not INT8; ARM verification is for "
                         "INT8 builds (e.g. target=mobile-int8), whose integer kernels differ between x86 and ARM")
    if not model.is_file():
        raise InputError(f"'{model}' named by manifest.json is missing; rebuild with edgekd build")
    import hashlib

    if manifest.get("sha256") and hashlib.sha256(model.read_bytes()).hexdigest() != manifest["sha256"]:
        raise InputError(f"'{model.name}' differs from the file the build wrote (sha256 mismatch); rebuild")
    if samples is not None and samples < 1:
        raise InputError(f"--samples must be positive, got {samples}")
    _check_cpu(cpu)
    lock = build_dir / "recipe.lock.toml"
    if not lock.is_file():
        raise InputError(f"'{build_dir}' has no recipe.lock.toml, needed to rebuild its test split")
    env = arm_environment(root, log=log)
    recipe = load_recipe(lock)
    data = load_data(recipe.data, seed=recipe.seed, base=recipe.base_dir)
    x, y = data.x_test[:samples], data.y_test[:samples]
    if log:
        log(f"[arm] {model.name}: {len(x)} test samples on host onnxruntime and emulated {cpu}")
    result = {"model": model.name, "sha256": manifest.get("sha256"), **verify_arm(model, x, y, cpu=cpu, env=env)}
    from .artifacts import write_atomic

    write_atomic(build_dir / "arm_verification.json", json.dumps(result, indent=2) + "\n")
    return result


def _onnxruntime_extensions() -> list[str]:  # noqa: N802 - a derived constant
    """Extensions of the formats onnxruntime runs (the formats whose ARM kernels this verifies)."""
    from . import backends

    return [backends.get(n).extension for n in backends.names() if backends.get(n).runtime == "onnxruntime"]
