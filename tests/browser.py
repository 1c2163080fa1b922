"""Open an HTML page in headless Chromium, offline, and report what it drew.

``page_report(html_path)`` copies the page, adds a small script that waits for the vega
views and then writes a JSON summary into the DOM, runs ``chromium --headless --dump-dom``
with every network request refused, and returns the summary:

* ``vega``: per ``<div id>``, whether a vega view drew into it (a ``<canvas>`` or ``<svg>``
  of class ``marks``);
* ``tops``: per ``<div id>``, its top on the page (pixels: what is shown first);
* ``images``: per ``<img>``, its ``src`` and natural width (0: it did not load);
* ``errors``: script errors the page raised (``window.onerror``), and ``vega_loaded``.

``chromium()`` is the browser's path, or None. Where it is absent the tests skip, except
under CI (``CI=true``), where they fail (``.ci/run`` installs it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """
<script>
window.__errors = [];
window.addEventListener("error", function (event) { window.__errors.push(String(event.message)); });
window.addEventListener("load", function () {
  setTimeout(function () {
    var vega = {}, tops = {};
    document.querySelectorAll("div[id]").forEach(function (div) {
      vega[div.id] = div.querySelector("canvas.marks, svg.marks") !== null;
      tops[div.id] = div.getBoundingClientRect().top;
    });
    var images = Array.prototype.map.call(document.images, function (img) {
      return {src: img.getAttribute("src"), width: img.naturalWidth};
    });
    var report = document.createElement("pre");
    report.id = "browser-report";
    report.textContent = JSON.stringify({vega: vega, tops: tops, images: images, errors: window.__errors,
                                         vega_loaded: typeof vegaEmbed === "function"});
    document.body.appendChild(report);
  }, 4000);
});
</script>
"""


def chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def require_chromium() -> str:
    path = chromium()
    if path is None:
        message = "no Chromium on PATH (apt-get install -y chromium): the results page is not checked in a browser"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must have it (.ci/run installs it)")
        pytest.skip(message)
    return path


def page_report(html_path: Path, profile: Path, timeout: float = 240) -> dict:
    """Render ``html_path`` offline in headless Chromium; the summary described above."""
    html_path = Path(html_path)
    probed = html_path.with_name("probed-" + html_path.name)
    page = html_path.read_text()
    head, tag, tail = page.rpartition("</body>")  # the last one: the bundles hold such strings
    assert tag, f"{html_path}: no </body>"
    probed.write_text(head + PROBE + tag + tail)
    command = [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               "--disable-extensions", "--disable-sync", "--metrics-recording-only",
               # offline: every host name fails to resolve, any connection goes to a dead proxy
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
               f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--run-all-compositor-stages-before-draw",
               "--dump-dom", probed.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="browser-report">(.*?)</pre>', result.stdout, flags=re.S)
    assert found, f"Chromium wrote no report (exit {result.returncode}):\n{result.stderr[-3000:]}"
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text)
