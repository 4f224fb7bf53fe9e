"""Running the stock nnU-Net commands and ``nnunet-sfda`` as subprocesses: environment, scripts, progress."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def console_script(name: str) -> str:
    """A console script of this environment (the caller may run without the venv being activated)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


#: the names of nnU-Net's three folders inside a working folder, as the demo and the benchmark lay them out
NNUNET_FOLDERS: tuple[str, str, str] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def nnunet_env(work: Path, *, folders: Sequence[str] = NNUNET_FOLDERS, drop_prefix: str = "nnUNet_sfda_",
               processes: int | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment for a stock nnU-Net command with nnU-Net's three folders inside ``work``.

    ``folders`` names the raw, preprocessed and results folders; variables starting with ``drop_prefix`` are left
    out (default: every ``nnUNet_sfda_*`` of the caller's, so a user's own settings never leak into a run; tests pass
    ``"nnUNet"`` to leave out all of nnU-Net's). ``nnUNet_def_n_proc`` is ``processes``, else the caller's, else 2;
    ``torch.compile`` is off (``nnUNet_compile=f``) unless the caller set it. The caller's ``nnUNet_n_proc_DA`` is
    left out: nnU-Net's planner crashes with 0 (the value a small CPU wants for training), so training commands get
    it from :func:`training_env`. ``extra`` is added last.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefix) and k != "nnUNet_n_proc_DA"}
    raw, preprocessed, results = (str(Path(work) / name) for name in folders)
    env.update(nnUNet_raw=raw, nnUNet_preprocessed=preprocessed, nnUNet_results=results,
               nnUNet_def_n_proc=str(processes) if processes is not None else env.get("nnUNet_def_n_proc", "2"),
               nnUNet_compile=env.get("nnUNet_compile", "f"), **extra)
    return env


def training_env() -> dict[str, str]:
    """What a training command adds to :func:`nnunet_env`: the caller's ``nnUNet_n_proc_DA``, else 0 (no
    augmentation worker processes: fastest on a small CPU, and an interrupted run resumes bit-identically)."""
    return {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}


#: nnUNetv2_predict options for these small runs: no test-time mirroring, and -npp 0 -nps 0 (nnU-Net's sequential
#: mode: no worker processes, each of which would import torch again). Same predictions, half the time here
#: (29.6 s → 14.2 s for 6 phantom volumes on 2 CPU cores).
PREDICT_OPTIONS: tuple[str, ...] = ("--disable_tta", "-npp", "0", "-nps", "0")


class StepRunner:
    """Runs one command after another with progress lines; each command's output goes to its own log file.

    With ``total_steps`` lines read ``[k/total]`` and logs are numbered in order; without, lines show the elapsed
    minutes and logs are named by ``log_name`` alone (stable names, so an interrupted run can be resumed).
    """

    def __init__(self, work: Path, env: dict[str, str], total_steps: int | None = None):
        self.work, self.env, self.total, self.step = work, env, total_steps, 0
        self.start = time.monotonic()
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def say(self, text: str) -> None:
        print(f"[{(time.monotonic() - self.start) / 60:5.1f} min] {text}", flush=True)

    def run(self, title: str, command: list[str], log_name: str, extra_env: dict[str, str] | None = None) -> float:
        """Run ``command`` (its first word a console script of this environment or on PATH); seconds taken."""
        self.step += 1
        if self.total is None:
            log = self.work / "logs" / f"{log_name}.log"
            self.say(f"{title} ... (log: {log.relative_to(self.work)})")
        else:
            log = self.work / "logs" / f"{self.step:02d}_{log_name}.log"
            print(f"[{self.step}/{self.total}] {title} ... (log: {log})", flush=True)
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.run([console_script(command[0]), *command[1:]], env={**self.env, **(extra_env or {})},
                                  stdout=f, stderr=subprocess.STDOUT, cwd=self.work)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"step '{title}' failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
        seconds = time.monotonic() - t0
        if self.total is not None:
            print(f"      done in {seconds:.0f} s (total {time.monotonic() - self.start:.0f} s)", flush=True)
        return seconds
