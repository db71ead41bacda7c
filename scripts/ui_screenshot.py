"""A screenshot of a study's run tree in the MLflow UI, as README shows it.

    mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --port 5000 &
    python scripts/ui_screenshot.py --experiment 1 --out docs/study_tree.png

Drives headless Chromium over the DevTools protocol (``websockets``, already installed with
alpaca-py): opens the experiment's runs table, expands the study run and its best trial, hides
the assistant side panel, and saves a PNG.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

EXPANDER = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the run-name cell's +/- button


def devtools_page(port: int, deadline: float) -> str:
    """The websocket address of the browser's first page."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium's DevTools endpoint did not answer")
        time.sleep(0.3)


class Page:
    def __init__(self, address: str) -> None:
        self.socket = connect(address, max_size=None).__enter__()  # closed when the browser exits
        self.ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="where `mlflow ui` serves")
    parser.add_argument("--experiment", default="1", help="the experiment id")
    parser.add_argument("--expand", type=int, default=2, help="run rows to expand, top down (study, then its first trial)")
    parser.add_argument("--size", default="1500x720", help="window width x height in pixels")
    parser.add_argument("--out", type=Path, default=Path("docs/study_tree.png"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium: apt-get install chromium")

    port = 9300
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}", f"--window-size={width},{height}", "about:blank",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            page = Page(devtools_page(port, time.monotonic() + 30))
            page.call("Page.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            page.call("Page.navigate", url=f"{args.ui}/#/experiments/{args.experiment}/runs?workflowType=machine_learning")
            time.sleep(10)
            for row in range(args.expand):  # each click adds rows below: the next expander is the next run down
                page.evaluate(f"document.querySelectorAll('{EXPANDER}')[{row}]?.click()")
                time.sleep(4)
            page.evaluate("[...document.querySelectorAll('button')].filter(b => b.getAttribute('aria-label') === 'Close')"
                          ".forEach(b => b.click())")  # fmt: skip
            time.sleep(2)
            shot = page.call("Page.captureScreenshot", format="png")
        finally:
            browser.terminate()
            browser.wait(timeout=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
