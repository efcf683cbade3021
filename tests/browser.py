"""A real browser for the report tests: headless Chromium driven over its DevTools protocol.

Chromium runs with `--remote-debugging-pipe`: it reads protocol messages (JSON, each ended by a NUL
byte) on fd 3 and writes replies and events on fd 4. No port, no websocket client, nothing from
outside. `open_page(path)` loads a page from file://, waits for its load event, and returns what a
person would notice: images that did not load (naturalWidth 0), audio elements and their sources,
console errors, failed resource loads and uncaught exceptions, and a full-page screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# What the page reports about itself, evaluated after its load event.
PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), url: i.src, complete: i.complete,
                                                   naturalWidth: i.naturalWidth})),
  audio: Array.from(document.querySelectorAll('audio')).map(a => ({src: a.getAttribute('src'), url: a.src,
                                                                    error: a.error ? a.error.code : null})),
  scripts: document.scripts.length,
  title: document.title,
  text: document.body.innerText})"""


def browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    images: list[dict]
    audio: list[dict]
    scripts: int
    title: str
    text: str
    errors: list[str] = field(default_factory=list)   # console errors, failed loads, exceptions
    screenshot: bytes = b""


class Chromium:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, timeout: float = 60.0, width: int = 1280, height: int = 900):
        self.timeout, self.width, self.height = timeout, width, height
        self.next_id = 0
        self.buf = b""

    def __enter__(self) -> "Chromium":
        exe = browser()
        if exe is None:
            raise RuntimeError("no Chromium found (Debian: apt-get install chromium; .ci/run installs it)")
        self.profile = tempfile.mkdtemp(prefix="pt-chromium-")
        to_r, to_w = os.pipe()      # we write, the browser reads on its fd 3
        from_r, from_w = os.pipe()  # the browser writes on its fd 4, we read

        def fds():  # in the child only: put the pipe ends at 3 and 4 (copies first: either may be 3 or 4 already)
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)  # dup2 makes the copy inheritable
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--mute-audio", "--hide-scrollbars", f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self.w, self.r = to_w, from_r
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- protocol -------------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             events: list | None = None) -> dict:
        """Send one command and wait for its reply; events that arrive meanwhile go into `events`."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if events is not None and "method" in m:
                events.append(m)

    def wait_event(self, name: str, session: str, events: list) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == name and e.get("sessionId") == session for e in events):
            events.append(self._read_message(deadline))

    # -- one page ---------------------------------------------------------------------------------------
    def open_page(self, path: str | Path, full_page: bool = True) -> PageResult:
        events: list = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session, events=events)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session, events=events)
        self.wait_event("Page.loadEventFired", session, events)
        # the audio elements fetch their metadata (preload=metadata) after the load event: give them a moment
        self.send("Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 500))", "awaitPromise": True},
                  session=session, events=events)
        probe = self.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session,
                          events=events)
        info = json.loads(probe["result"]["value"])
        shot_params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=session, events=events)["cssContentSize"]
            shot_params.update(captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000),
                                     "scale": 1})
        shot = base64.b64decode(self.send("Page.captureScreenshot", shot_params, session=session, events=events)["data"])
        errors = []
        for e in events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                errors.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        self.send("Target.closeTarget", {"targetId": target})
        return PageResult(info["images"], info["audio"], info["scripts"], info["title"], info["text"], errors, shot)
