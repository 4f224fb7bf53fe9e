"""The runs kept in docs/evidence/choice replay through scripts/evaluate_choice.py: their files stay readable as
the file models change, so the choice tables in docs/results.md can be reproduced without training again."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nnunet_sfda.benchmark.choice_evaluation import TRAINER_RULE

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence" / "choice"


def test_the_kept_runs_replay_through_the_evaluation_script(tmp_path):
    runs = sorted(p.parent for p in EVIDENCE.rglob("candidate_dice.json"))
    assert len(runs) >= 6, f"expected the development seed's runs under {EVIDENCE}"
    out = tmp_path / "replay.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_choice.py"), *map(str, runs),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipping" not in proc.stdout
    replay = json.loads(out.read_text())
    assert len(replay["runs"]) == len(runs)
    trainers = next(r for r in replay["rules"] if r["rule"] == TRAINER_RULE.name)
    assert trainers["runs"] == len(runs) and 0 <= trainers["goal_a"] <= len(runs)
