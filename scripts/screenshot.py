"""Make the pictures of README.md and docs/guide.md (a dashboard screenshot, a report figure) from a study.

    python scripts/screenshot.py                      # runs the smoke study in a temp dir first (~2 min)
    python scripts/screenshot.py --storage sqlite:///studies.db --study smoke

Writes docs/dashboard.png (the study page: Pareto front with named
objectives), docs/dashboard-trial.png (a trial with its confusion matrix) and
docs/report-pareto-pairs.png.  Needs chromium, chromium-driver and selenium
(the browser test's setup).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", help="a storage holding the study (default: run the smoke study in a temp dir)")
    p.add_argument("--study", default="smoke")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    a = p.parse_args()
    reason = browser.browser_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        storage = a.storage
        if storage is None:
            storage = f"sqlite:///{tmp}/smoke.db"
            subprocess.run([sys.executable, "-m", "search.run", "--study", "smoke", "--storage", storage],
                           env=env, cwd=tmp, check=True)
        subprocess.run([sys.executable, "-m", "search.report", "--study", a.study, "--storage", storage,
                        "--out", f"{tmp}/report"], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        shutil.copy(f"{tmp}/report/pareto_pairs.png", a.out / "report-pareto-pairs.png")

        import optuna

        study_id = optuna.load_study(study_name=a.study, storage=storage)._study_id
        with browser.serve_dashboard(storage, env) as base, browser.chrome(1400, 900) as d:
            d.get(f"{base}/dashboard/studies/{study_id}")
            browser.wait_for(d, f"{browser.PARETO_POINTS_JS} > 0", what="Pareto-front plot")
            time.sleep(1)  # let plotly finish its transitions
            d.save_screenshot(str(a.out / "dashboard.png"))
            d.get(f"{base}/dashboard/studies/{study_id}/trials")
            browser.wait_for(d, browser.ARTIFACTS_LOADED_JS, what="artifact images")
            d.execute_script("[...document.querySelectorAll('h5, h4, h3, h2')].find(h => "
                             "h.innerText.trim() === 'Artifacts')?.scrollIntoView({block: 'center'});"
                             "document.querySelectorAll('*').forEach(e => { if (e.scrollLeft) e.scrollLeft = 0; })")
            time.sleep(0.5)
            d.save_screenshot(str(a.out / "dashboard-trial.png"))
    for name in ("dashboard.png", "dashboard-trial.png", "report-pareto-pairs.png"):
        print(a.out / name, (a.out / name).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
