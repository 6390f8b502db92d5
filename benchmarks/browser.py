"""Open an HTML file or a loopback URL in headless Chromium over the DevTools protocol: console errors, failed
loads, the rendered text, a screenshot.

Every host name but 127.0.0.1 resolves to nothing (--host-resolver-rules), so a page that needs the network (a CDN
script, a web font) shows up as failed loads: a page that passes works offline (loopback servers stay reachable).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-port=0"]


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    text_length: int = 0  # characters of rendered text (0 = blank page)
    text: str = ""  # the rendered text
    title: str = ""
    screenshot: Path | None = None


class _Session:
    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def wait_for(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return True
            self.pump(0.2)
        return False


def check_page(html: Path | str, screenshot: Path, settle_s: float = 2.0, timeout_s: float = 90.0,
               window: tuple[int, int] = (1280, 1600), full_page: bool = False) -> PageCheck:
    """Load `html` (a file, or a URL such as a loopback server's) in headless Chromium, wait for it to render,
    screenshot it (`full_page`: the whole page, not just the window), and collect every error."""
    # Chromium's helper processes (renderer, crash handler) may still write into the profile after the browser
    # process exits: the whole process group is stopped before the profile is removed, and a file appearing during
    # the removal is not an error of the page
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--window-size={window[0]},{window[1]}",
                                 f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout_s
            while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
                time.sleep(0.1)
            port, path = port_file.read_text().split()[:2]
            return _inspect(f"ws://127.0.0.1:{port}{path}", html, screenshot, settle_s, timeout_s, full_page)
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the browser's process group (it leads its own session), SIGKILL what is left after 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + 5  # the browser is gone; give its helpers a moment to follow
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _inspect(ws_url: str, html: Path | str, screenshot: Path, settle_s: float, timeout_s: float,
             full_page: bool) -> PageCheck:
    s = _Session(ws_url)
    try:
        target = s.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = s.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            s.call(f"{domain}.enable", session=sid)
        s.events.clear()
        url = html if isinstance(html, str) else html.resolve().as_uri()
        s.call("Page.navigate", {"url": url}, session=sid)
        if not s.wait_for("Page.loadEventFired", timeout_s):
            raise RuntimeError(f"{html} did not finish loading within {timeout_s} s")
        s.pump(settle_s)  # let the page's scripts draw
        check = PageCheck()
        for e in s.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                check.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                check.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                           for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                check.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                check.errors.append(f"failed load: {p.get('errorText')} ({p.get('type')})")
        result = s.call("Runtime.evaluate", {"expression": "[document.title, document.body.innerText]",
                                             "returnByValue": True}, session=sid)["result"]["value"]
        check.title, check.text = result[0], result[1]
        check.text_length = len(check.text)
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = s.call("Page.getLayoutMetrics", session=sid)["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = s.call("Page.captureScreenshot", params, session=sid)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = screenshot
        return check
    finally:
        s.ws.close()
