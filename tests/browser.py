"""Headless Chromium, driven over the DevTools protocol, for tests of what a person sees.

`inspect_page(url, screenshot)` opens a page in Debian's Chromium, waits for it to load and
returns what went wrong on it (console errors, uncaught exceptions, failed loads, broken images)
together with every image's natural size, and saves a full-page screenshot. Only the
loopback interface is used: Chromium's DevTools endpoint on 127.0.0.1 and `file://` pages.

The Makefile installs Chromium when it is missing (`make test`), so the browser test never
skips; `chromium_binary()` says so in its error when it is run some other way.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30
LOAD_TIMEOUT_S = 60
MAX_SCREENSHOT_HEIGHT = 12000

IMAGES_JS = """JSON.stringify(Array.from(document.images).map(image => ({
    src: (image.getAttribute('src') || '').slice(0, 120), complete: image.complete,
    naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight})))"""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise RuntimeError("no Chromium on this machine: `make test` installs Debian's package "
                       "(apt-get install -y chromium)")


def _devtools_port(profile: Path, process: subprocess.Popen) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Chromium exited with {process.returncode} before it opened DevTools")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    raise RuntimeError(f"Chromium opened no DevTools port within {START_TIMEOUT_S} s")


def _page_socket(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        targets = json.loads(response.read())
    return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")


class _DevTools:
    """One page's DevTools session: commands with replies, and every event kept in order."""

    def __init__(self, socket) -> None:
        self.socket, self.events, self._next_id = socket, [], 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        await self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def wait_for(self, method: str, timeout: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.socket.recv())
                self.events.append(message)
                if message.get("method") == method:
                    return


def _problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            problems.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            problems.append(f"load failed: {params.get('errorText')}")
    return problems


async def _inspect(socket_url: str, url: str, screenshot: Path, width: int) -> dict[str, Any]:
    import websockets

    async with websockets.connect(socket_url, max_size=256 * 1024 * 1024) as socket:
        page = _DevTools(socket)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.call(f"{domain}.enable")
        await page.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                        mobile=False)
        await page.call("Page.navigate", url=url)
        await page.wait_for("Page.loadEventFired", LOAD_TIMEOUT_S)
        images = json.loads((await page.call("Runtime.evaluate", expression=IMAGES_JS,
                                             returnByValue=True))["result"]["value"])
        title = (await page.call("Runtime.evaluate", expression="document.title", returnByValue=True))["result"]
        metrics = await page.call("Page.getLayoutMetrics")
        height = min(int(metrics["cssContentSize"]["height"]) + 1, MAX_SCREENSHOT_HEIGHT)
        await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return {"title": title.get("value"), "images": images, "problems": _problems(page.events),
                "height": height}


def inspect_page(url: str, screenshot: Path, width: int = 1280) -> dict[str, Any]:
    """Load `url` in headless Chromium: {title, images, problems, height}; the screenshot goes to `screenshot`."""
    with tempfile.TemporaryDirectory(prefix="ctxemo-chromium-") as profile:
        process = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            socket_url = _page_socket(_devtools_port(Path(profile), process))
            return asyncio.run(_inspect(socket_url, url, Path(screenshot), width))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
