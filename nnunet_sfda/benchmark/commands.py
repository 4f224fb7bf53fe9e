"""Running the stock nnU-Net commands and ``nnunet-sfda`` as subprocesses: environment, scripts, progress."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def console_script(name: str) -> str:
    """A console script of this environment (the caller may run without the venv being activated)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def nnunet_env(work: Path, **extra: str) -> dict[str, str]:
    """The environment with nnU-Net's three folders inside ``work`` and no ``nnUNet_sfda_*`` of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_sfda_")}
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_def_n_proc=env.get("nnUNet_def_n_proc", "2"),
               nnUNet_compile=env.get("nnUNet_compile", "f"), **extra)
    return env



class StepRunner:
    """Runs one step after another with progress lines; each command's output goes to its own log file."""

    def __init__(self, work: Path, env: dict[str, str], total_steps: int):
        self.work, self.env, self.total, self.step = work, env, total_steps, 0
        self.start = time.monotonic()
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, title: str, command: list[str], log_name: str, extra_env: dict[str, str] | None = None) -> None:
        self.step += 1
        log = self.work / "logs" / f"{self.step:02d}_{log_name}.log"
        print(f"[{self.step}/{self.total}] {title} ... (log: {log})", flush=True)
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.run(command, env={**self.env, **(extra_env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                  cwd=self.work)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"step '{title}' failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
        print(f"      done in {time.monotonic() - t0:.0f} s (total {time.monotonic() - self.start:.0f} s)", flush=True)
