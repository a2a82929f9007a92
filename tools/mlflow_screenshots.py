"""Screenshots of MLflow's UI in a real headless browser: one paper's runs table (pipeline
parent runs expanded to show their nested training runs, with the Source and Dataset columns)
and the compare view of its training runs.

    make screenshots [PAPER=nice] [PORT=5055]

It starts ``mlflow ui`` on the pipeline's store, drives Debian's Chromium through Selenium
(``apt-get install chromium chromium-driver``; Selenium comes with the ``screenshots`` extra
that the make target installs) and writes ``docs/screenshots/<paper>_runs.png`` and
``<paper>_compare.png``. Not part of ``make test``: it needs a browser and packages beyond the
project's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow_server import wait_until_up  # tools/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]


def _browser(chromium: str, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(arg)
    driver = shutil.which("chromedriver")
    if driver is None:
        raise SystemExit("error: chromedriver not found: apt-get install chromium-driver")
    return webdriver.Chrome(options=options, service=Service(driver))


def _tidy_runs_table(browser) -> int:
    """Close the assistant panel, widen the Run Name column to its content and expand every
    parent run (MLflow folds nested runs); return how many parents were expanded. The
    selectors are MLflow 3.17's; a later UI may need new ones (the screenshot still comes)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def click_all(selector: str) -> int:
        found = browser.find_elements(By.CSS_SELECTOR, selector)
        for element in found:
            browser.execute_script("arguments[0].click();", element)
        return len(found)

    click_all("[data-component-id='mlflow.assistant.chat_panel.close']")
    expanded = click_all("button[data-component-id*='runnamecellrenderer']")
    time.sleep(1.5)
    for column in ("attributes.`Run Name`", "attributes.`Source`"):
        handles = browser.find_elements(
            By.CSS_SELECTOR, f"[col-id='{column}'] .ag-header-cell-resize"
        )
        if handles:  # ag-grid sizes a column to its content on a double click of its edge
            ActionChains(browser).double_click(handles[0]).perform()
    return expanded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python tools/mlflow_screenshots.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'runs' / 'mlflow.db'}")
    parser.add_argument("--paper", default="nice")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds to let a page render")
    args = parser.parse_args(argv)

    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        raise SystemExit("error: Chromium not found: apt-get install chromium chromium-driver")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.paper)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment {args.paper!r} in {args.tracking_uri}: "
                         f"run `make reproduce PAPER={args.paper}` first")  # fmt: skip
    runs = client.search_runs([experiment.experiment_id])
    training = [r for r in runs if "experiment" in r.data.tags][:8]
    if len(training) < 2:
        raise SystemExit(f"error: {args.paper} has {len(training)} training run(s); the "
                         "compare view needs two")  # fmt: skip

    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
         "--host", "127.0.0.1", "--port", str(args.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        wait_until_up(url, server, timeout=90, what="mlflow ui")
        browser = _browser(chromium, 1700, 1000)
        try:
            eid = experiment.experiment_id
            browser.get(f"{url}/#/experiments/{eid}/runs")
            time.sleep(args.settle)
            expanded = _tidy_runs_table(browser)
            time.sleep(2)
            table = args.out / f"{args.paper}_runs.png"
            browser.save_screenshot(str(table))
            ids = json.dumps([r.info.run_id for r in training])
            # the route MLflow's own "Compare" button opens: JSON lists, as it writes them
            query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([eid])})
            browser.get(f"{url}/#/compare-runs?{query}")
            time.sleep(args.settle)
            _tidy_runs_table(browser)  # the assistant panel again
            compare = args.out / f"{args.paper}_compare.png"
            browser.save_screenshot(str(compare))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {table} ({expanded} parent run(s) expanded) and {compare}")


if __name__ == "__main__":
    main()
