"""The machine as imgclf sees it: `imgclf env`, and the block every benchmark prints first.

Numbers measured on one machine hold for its class of CPU only (AVX2, AVX-512 with VNNI and BF16, AMX ...),
so every measurement is reported next to this block.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

import torch

from imgclf.compute.device import cached_probes, cpu_has_native_bf16, machine_key, precision_cache_path
from imgclf.compute.distributed import cores
from imgclf.compute.memory import proc_bytes
from imgclf.core.cpu import cpu_info, cpu_isa, int8_8bit_exact
from imgclf.core.version import __version__


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    total = proc_bytes("/proc/meminfo", "MemTotal")
    return None if total is None else round(total / 2**30, 1)


def machine_report(probe: dict | None = None) -> dict:
    """Everything `imgclf env --json` prints; `probe`: a model's training-precision probe run now
    (`train.training.probe_precision`), shown under precision_probes.now."""
    gpus = gpu_report()
    isa = cpu_isa()
    report = {
        "imgclf": __version__,
        "cpu": {
            "model": cpu_info()["model"],
            "cores": cores(),
            "isa": isa,
            "torch_capability": str(torch.backends.cpu.get_cpu_capability()),
            "caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)},
        },
        "memory_gib": _memory_gib(),
        "gpus": gpus,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            **{d: _version(d) for d in ("torchvision", "onnxruntime", "onnx", "numpy")},
        },
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "auto": auto_picks(gpus),
        "precision_probes": {"cache": precision_cache_path(), "machine": machine_key(), "results": cached_probes()},
    }
    if probe is not None:
        report["precision_probes"]["now"] = probe
    return report


def gpu_report() -> list[dict]:
    """Name, memory (GiB) and compute capability of each CUDA GPU; [] without one."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "compute_capability": f"{p.major}.{p.minor}",
                }
            )
    return gpus


def auto_picks(gpus: list[dict]) -> dict:
    """What each `auto` setting resolves to on this machine, in words."""
    if gpus:
        train_auto = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp16 autocast + gradient scaler"
    elif cpu_has_native_bf16():
        train_auto = "measured per model: a short fp32/bf16 probe, cached (bf16 only when >= 5% faster)"
    else:
        train_auto = "fp32 (no native bf16 on this CPU: bf16 would be emulated)"
    return {
        "device": "cuda" if gpus else "cpu",
        "train_precision": train_auto,
        "inference_precision": "fp32 (the same answers as fp32 exports on every machine; --precision bf16 to opt in)",
        "memory_layout": "channels_last",
        "int8_weights": "7-bit (no int16 saturation where there is no VNNI"
        + (
            "; 8-bit weights are exact on this CPU: an 8-bit try where the 7-bit ones miss --int8-target"
            if int8_8bit_exact()
            else ""
        )
        + ")",
    }


def summary_line(r: dict) -> str:
    """One line for notes and logs: imgclf 0.1.0 | AMD EPYC | 2 cores | AVX2 AVX-512 ... | no GPU | torch ..."""
    isa = " ".join(k for k, v in r["cpu"]["isa"].items() if v) or "no AVX2"
    caps = "".join(f" [{k}={v}]" for k, v in r["cpu"]["caps"].items())
    gpu = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['compute_capability']})" for g in r["gpus"]) or "no GPU"
    v = r["versions"]
    return (
        f"imgclf {r['imgclf']} | {r['cpu']['model']} | {r['cpu']['cores']} cores | {isa}{caps} | "
        f"{r['memory_gib']} GiB | {gpu} | python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}"
    )


def format_env(r: dict) -> str:
    c, v, a = r["cpu"], r["versions"], r["auto"]
    lines = [
        summary_line(r),
        "",
        f"cpu            {c['model']}, {c['cores']} cores",
        "instructions   " + "  ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in c["isa"].items()),
        f"torch kernels  {c['torch_capability']}" + "".join(f"  ({k}={val})" for k, val in c["caps"].items()),
        f"memory         {r['memory_gib']} GiB",
        "gpu            "
        + (
            ", ".join(
                f"{g['name']}, {g['memory_gib']} GiB, compute capability {g['compute_capability']}" for g in r["gpus"]
            )
            or "none"
        ),
        "versions       " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"threads        {r['threads']['intra_op']} intra-op, {r['threads']['inter_op']} inter-op",
        "auto picks",
        f"  device               {a['device']}",
        f"  training precision   {a['train_precision']}",
        f"  inference precision  {a['inference_precision']}",
        f"  memory layout        {a['memory_layout']}",
        f"  int8 weights         {a['int8_weights']}",
    ]
    probes = r["precision_probes"]
    for key, res in sorted(probes["results"].items()):
        lines.append(f"  probed: {key}: {res['choice']} (fp32 {res['fp32_ms']} ms, bf16 {res['bf16_ms']} ms a step)")
    if "now" in probes:
        n = probes["now"]
        detail = f" (fp32 {n['fp32_ms']} ms, bf16 {n['bf16_ms']} ms a step)" if "fp32_ms" in n else ""
        lines.append(f"  probe {n['model']}: {n['choice']}{detail}")
    return "\n".join(lines)


def git_commit(path: str = ".") -> str | None:
    """The commit checked out in the git work tree around `path` (with "+dirty" when tracked files changed), or
    None: not a work tree, no git, or git slower than 10 s. What a model card and a tracked run record of the
    code that made them."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(
            [git, "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [git, "-C", path, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def env_block() -> str:
    """What every script in benchmarks/ prints first: the machine, so that its numbers name their class."""
    return format_env(machine_report()) + "\n"
