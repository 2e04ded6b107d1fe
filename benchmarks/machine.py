"""The machine a benchmark ran on, printed first by every benchmark: figures mean nothing without
it (CPU model and the cores this process may use, /dev/shm, the load, the GPU, the versions)."""

from __future__ import annotations

import os
import platform
import shutil

import PIL
import torch
import torchvision

from attgmae.core.resources import available_cores


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: str | torch.device = "cpu") -> str:
    """One line: CPU, cores, /dev/shm, load average, GPU, versions."""
    try:
        shm = f"{shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB free"
    except OSError:
        shm = "none"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = "no GPU"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return (
        f"machine: {cpu_model()}, {available_cores()} usable of {os.cpu_count()} cores, "
        f"/dev/shm {shm}, load {load}; {gpu}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}"
    )


def print_machine(device: str | torch.device = "cpu") -> None:
    print(machine_line(device), flush=True)
