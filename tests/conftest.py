"""Shared pytest fixtures: a local HTTP server, an isolated user cache, throwaway DVC projects.

Fixtures
--------
``isolated_cache`` (autouse)
    ``$FEWLABEL_CACHE_DIR`` points at a fresh temp folder for every test (returned as a Path),
    so tests never read or fill the real per-user cache, and subprocesses (``dvc repro``)
    inherit it.
``http_server``
    Serves the folder ``http_server.root`` at ``http_server.url`` (``http://127.0.0.1:<port>/``)
    from a background thread, with HTTP Range support (206 Partial Content, 416). It records
    every request in ``http_server.requests`` (:class:`Request`: ``name``, ``range``,
    ``status``), can drop a response part-way (``cut_after(name, nbytes, times=1)``) or
    answer with an error status (``fail(name, status=500, times=1)``).
``unreachable_url``
    ``http://127.0.0.1:<port>/`` with nothing listening there (connection refused).

Tests that run DVC (through ``dvc_project`` or ``reproduced_pipeline``) are marked ``slow``
here; modules mark their other slow tests (a stage or command in a new Python process,
TensorFlow extraction, a browser, a server) themselves. ``python -m pytest -m "not slow"``
runs the fast tests.

Helpers: ``free_port()`` (a TCP port on 127.0.0.1 nothing listens on); ``require(module,
install)`` (import an optional dependency, or skip the test, except under CI where it fails);
``read_only_runner(folder)`` (a command prefix that runs a command with ``folder`` read-only,
even for root, or None where that is not possible).
``params_file``
    ``params_file({"data.source": "/x"}) -> Path``: a copy of params.yaml in ``tmp_path``
    with dotted-key edits (``edit_params(path, updates)`` does the same to any file).
``dvc_project``
    A :class:`DvcProject` in ``tmp_path / "project"``: a git repo (one initial commit) holding
    copies of this repo's ``dvc.yaml``, ``params.yaml``, ``.gitignore``, ``stages/``, ``fewlabel/`` and the test backbone, with
    ``dvc init`` done (a copy of one made once per session). Use ``make_dvc_project(path,
    extra=[...])`` for other layouts.
``reproduced_pipeline`` (session)
    The whole pipeline reproduced once per session (``dvc repro``, committed) on a generated
    VOC2007 with :data:`FAST_PARAMS` and a pool to rank: never change it; a module takes its
    own copy with ``copy_project(reproduced_pipeline, reproduced_pipeline.root.with_name(name))``
    (seconds, not a repro).

Example (end to end)::

    def test_pipeline(dvc_project, http_server):
        tarballs = make_tarballs(http_server.root, 2007)
        dvc_project.set_params({"data.source": http_server.url, "data.md5": md5s(tarballs)})
        result = dvc_project.dvc("repro", "prepare")
        assert result.returncode == 0, result.stdout + result.stderr
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pytest

from fewlabel.io import CACHE_ENV
from tests.tiny_backbone import RELATIVE_PATH as TINY_BACKBONE

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The virtualenv's bin folder: put first on PATH so that ``python -m stages.x`` in dvc.yaml
#: runs with this interpreter.
VENV_BIN = Path(sys.executable).parent
DVC = VENV_BIN / "dvc"
#: What :func:`make_dvc_project` copies from the repo by default.
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "stages", "fewlabel", "suggestions/labelled.txt",
                 TINY_BACKBONE)


# --------------------------------------------------------------------------- markers

#: Fixtures that run DVC: a test using one is marked ``slow`` without saying so.
DVC_FIXTURES = {"dvc_project", "reproduced_pipeline", "_fresh_dvc_project"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a DVC project (``pytest -m "not slow"`` leaves them out),
    then run the slow tests first, in their order: with two test processes (``make test``), the
    quick ones fill the end, so neither process waits long on the other's last test."""
    for item in items:
        if DVC_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the order within each kind


# --------------------------------------------------------------------------- user cache

@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Point ``$FEWLABEL_CACHE_DIR`` at a fresh folder for this test; return it."""
    path = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


# --------------------------------------------------------------------------- HTTP server

@dataclass(frozen=True)
class Request:
    """One request the test server received: the file name asked for, its Range header
    (None if absent) and the status answered."""
    name: str
    range: str | None
    status: int
    method: str = "GET"


@dataclass
class _Fault:
    kind: str  # "cut" or "fail"
    value: int  # bytes sent before cutting, or the status to answer
    times: int | None  # how many more requests it applies to (None: all)


class HttpServer:
    """A static file server on 127.0.0.1 for tests (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Request] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"state": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-http-server", daemon=True)
        self._thread.start()

    def cut_after(self, name: str, nbytes: int, times: int | None = 1) -> None:
        """Drop the connection after ``nbytes`` of the body of the next ``times`` responses for
        ``name`` (None: every response); the headers still announce the full length.

        Faults for one name queue up in the order given: ``cut_after(n, 100); fail(n, 503)``
        cuts the first response and fails the second."""
        with self._lock:
            self._faults.setdefault(name, []).append(_Fault("cut", nbytes, times))

    def fail(self, name: str, status: int = 500, times: int | None = 1) -> None:
        """Answer the next ``times`` requests for ``name`` with an error ``status`` (queued
        after earlier faults for ``name``, see :meth:`cut_after`)."""
        with self._lock:
            self._faults.setdefault(name, []).append(_Fault("fail", status, times))

    def requests_for(self, name: str) -> list[Request]:
        """The recorded requests for one file name."""
        return [r for r in self.requests if r.name == name]

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # used by the handler
    def _take_fault(self, name: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(name)
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
            return fault

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    state: HttpServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _answer(self, name: str, range_header, status: int, headers: dict, payload: bytes = b"") -> None:
        self.state._record(Request(name, range_header, status, self.command))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        path = (self.state.root / name).resolve()
        root = self.state.root.resolve()
        if root not in path.parents or not path.is_file():
            return self._answer(name, range_header, 404, {}, b"not found")
        fault = self.state._take_fault(name)
        if fault is not None and fault.kind == "fail":
            return self._answer(name, range_header, fault.value, {}, b"injected failure")
        data = path.read_bytes()
        size, start, end, status = len(data), 0, len(data) - 1, 200
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if range_header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                if start >= size or end < start:
                    return self._answer(name, range_header, 416, {"Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        payload = data[start:end + 1]
        self.state._record(Request(name, range_header, status, self.command))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not body:
            return
        if fault is not None and fault.kind == "cut":
            self.wfile.write(payload[:fault.value])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(payload)


@pytest.fixture
def http_server(tmp_path) -> Iterable[HttpServer]:
    """A local file server rooted at ``tmp_path / "www"``; shut down after the test."""
    server = HttpServer(tmp_path / "www")
    try:
        yield server
    finally:
        server.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(module: str, install: str):
    """``module`` imported: an optional dependency (``install`` says how to get it). Skips the
    test where it is missing, except under CI (``make test`` installs it), where that fails."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"optional: {install}")


def read_only_runner(folder: Path):
    """A function ``argv -> argv`` that runs a command with ``folder`` read-only for it, even for
    root (chmod does not stop root: a read-only bind mount in a user and mount namespace,
    ``unshare -rm``), or None where that is not possible."""
    if shutil.which("unshare") is None:
        return None
    mount = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && ! touch {folder}/.probe 2>/dev/null"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return None
    return lambda argv: ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv]


@pytest.fixture
def unreachable_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    return f"http://127.0.0.1:{free_port()}/"


# --------------------------------------------------------------------------- params files

def edit_params(path: str | Path, updates: Mapping[str, Any]) -> Path:
    """Set keys of a params.yaml in place by dotted name (``{"data.source": "/x"}``).

    Missing sections are created; a value replaces the old one whole; comments are kept.
    """
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip
    path = Path(path)
    doc = yaml.load(path.read_text()) if path.exists() else None
    doc = doc if doc is not None else {}
    for dotted, value in updates.items():
        *parents, key = dotted.split(".")
        node = doc
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[key] = _plain(value)
    with open(path, "w") as handle:
        yaml.dump(doc, handle)
    return path


def _plain(value):
    """Paths and tuples as YAML-friendly str and lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.fixture
def params_file(tmp_path):
    """A function ``(updates={}, name="params.yaml") -> Path``: a copy of the repo's
    params.yaml in ``tmp_path`` with dotted-key ``updates`` applied (for calling a stage's
    ``main(["--params", str(path), ...])`` directly)."""
    def make(updates: Mapping[str, Any] | None = None, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        if not path.exists():
            shutil.copy2(REPO_ROOT / "params.yaml", path)
        return edit_params(path, updates or {})
    return make


# --------------------------------------------------------------------------- DVC projects

@dataclass
class DvcProject:
    """A throwaway git + DVC repo holding a copy of the pipeline; commands run in ``root``.

    - ``run("dvc repro prepare")`` or ``run(["git", "status"])``: a CompletedProcess with text
      ``stdout``/``stderr`` (``check=True`` raises with both in the message);
    - ``dvc(*args)`` / ``git(*args)``: shortcuts for ``run([dvc or git, *args])``;
    - ``set_params({"data.source": url, "svm.C": 10})``: edit params.yaml by dotted keys
      (missing sections are created; comments are kept); ``params()`` reads it back;
    - ``commit(message)``: ``git add -A`` and commit (``dvc exp run --queue`` needs that);
      ``reset()``: back to the last commit, outputs included (what a test changed, undone);
    - ``path("data/labels.csv")``: an absolute path inside the project; ``lock()``: dvc.lock.

    Subprocesses get PATH with the virtualenv's bin first (so dvc.yaml's ``python`` is this
    interpreter), ``$FEWLABEL_CACHE_DIR`` from the test, and DVC's global, system and site
    folders isolated in ``home`` (no user config, no analytics).
    """
    root: Path
    home: Path
    env: dict = field(default_factory=dict)

    def run(self, cmd: str | Sequence[str], check: bool = False, timeout: float = 600,
            env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        if argv and argv[0] == "dvc":
            argv[0] = str(DVC)
        result = subprocess.run(argv, cwd=self.root, env={**self.environment(), **(env or {})},
                                capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def dvc(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run([str(DVC), *args], **kwargs)

    def git(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["git", *args], **kwargs)

    def run_queue(self, timeout: float, poll: float = 2.0) -> str:
        """Start the experiment queue with one worker and wait until nothing is queued or
        running (at most ``timeout`` seconds); returns the last ``dvc queue status`` output."""
        self.dvc("queue", "start", "-j", "1", check=True)
        deadline = time.time() + timeout
        while True:
            status = self.dvc("queue", "status").stdout
            if not re.search(r"\b(Queued|Running)\b", status) or time.time() >= deadline:
                return status
            time.sleep(poll)

    def environment(self) -> dict[str, str]:
        """The environment subprocesses run with (the current one plus the isolation)."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
        env.update({"DVC_NO_ANALYTICS": "1",
                    "DVC_GLOBAL_CONFIG_DIR": str(self.home / "dvc-global"),
                    "DVC_SYSTEM_CONFIG_DIR": str(self.home / "dvc-system"),
                    "DVC_SITE_CACHE_DIR": str(self.home / "dvc-site-cache"),
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "PYTHONDONTWRITEBYTECODE": "1"})
        env.pop("PYTHONPATH", None)
        # as in a user's shell: not the level `import fewlabel` set in this test process
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        env.update(self.env)
        return env

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def params(self) -> dict:
        import yaml
        return yaml.safe_load(self.path("params.yaml").read_text()) or {}

    def set_params(self, updates: Mapping[str, Any] | None = None, **top_level: Any) -> None:
        """Set params by dotted key: ``set_params({"data.year": 2012, "data.md5": {...}})``.

        A value replaces the key's old value whole (a dict value is not merged).
        """
        edit_params(self.path("params.yaml"), {**(updates or {}), **top_level})

    def reset(self) -> None:
        """Back to the last commit: params, dvc.lock (DVC stages it: core.autostage), the outputs,
        and no new file in metrics/, plots/ or reports/."""
        self.git("reset", "-q", "--hard", check=True)
        self.git("clean", "-fdq", "metrics", "plots", "reports", check=True)
        self.dvc("checkout", "--force", check=True)

    def commit(self, message: str = "update") -> None:
        self.git("add", "-A", check=True)
        self.git("commit", "-q", "--allow-empty", "-m", message, check=True)

    def lock(self) -> dict:
        import yaml
        path = self.path("dvc.lock")
        return yaml.safe_load(path.read_text()) if path.exists() else {}


def make_dvc_project(path: str | Path, files: Iterable[str] = PROJECT_FILES, extra: Iterable[str] = (),
                     commit: bool = True) -> DvcProject:
    """Create a :class:`DvcProject` at ``path`` from this repo's ``files`` plus ``extra`` paths.

    Runs ``git init`` (with a local user name and email), ``dvc init``, copies this repo's
    ``.dvc/config`` and ``.dvc/plots/`` if it has them, and (``commit=True``) commits everything.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    home = root.parent / f".{root.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in [*files, *extra]:
        source = REPO_ROOT / rel
        if source.is_dir():
            shutil.copytree(source, root / rel, ignore=ignore, dirs_exist_ok=True)
        elif source.exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / rel)
        elif rel not in PROJECT_FILES:
            raise FileNotFoundError(f"{source}: not in the repo, cannot copy it into the project")
    project = DvcProject(root=root, home=home)
    project.git("init", "-q", check=True)
    project.git("config", "user.email", "tests@example.com", check=True)
    project.git("config", "user.name", "Tests", check=True)
    project.git("config", "commit.gpgsign", "false", check=True)
    project.dvc("init", "-q", check=True)
    if (REPO_ROOT / ".dvc" / "config").is_file():
        shutil.copy2(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    if (REPO_ROOT / ".dvc" / "plots").is_dir():  # the results page and the plot templates
        shutil.copytree(REPO_ROOT / ".dvc" / "plots", root / ".dvc" / "plots", ignore=ignore, dirs_exist_ok=True)
    if commit:
        project.commit("initial pipeline")
    return project


@pytest.fixture(scope="session")
def _fresh_dvc_project(tmp_path_factory) -> DvcProject:
    """:func:`make_dvc_project` done once per session (``dvc init`` takes seconds): ``dvc_project`` copies it."""
    return make_dvc_project(tmp_path_factory.mktemp("dvc-template") / "project")


@pytest.fixture
def dvc_project(_fresh_dvc_project, tmp_path) -> DvcProject:
    """A fresh DVC project (see :class:`DvcProject`) in ``tmp_path / "project"``."""
    return copy_project(_fresh_dvc_project, tmp_path / "project")


# --------------------------------------------------------------------------- the generated pipeline

#: Params that make the whole pipeline quick on generated images (a tiny random CNN, small views).
FAST_PARAMS = {
    "features.backbones": [TINY_BACKBONE],  # tests/tiny_backbone.py: each process builds it in a blink
    "features.weights": None,
    # views chosen by cross-validation (the default policy), between 32 and 64 pixels
    "features.image_size": "auto",
    "features.select_scales": [0.125, 0.25],
    "features.select_folds": 2,
    "features.batch_size": 16,
    "features.runtime": "keras",  # the reference (auto would convert the model for OpenVINO first)
    "subset.n_images": 40,
    "subset.min_per_class": 3,
    "train.oof_folds": 3,
    "tune.folds": 2,
    "svm.gamma": "scale",
    "svm.n_jobs": 1,
    "evaluate.bootstrap": 20,
    # no heatmaps: they cost every evaluate run a TensorFlow start (about 10 s); the one test that
    # turns them on is test_pipeline_dvc's test_heatmaps_through_dvc_rerun_only_evaluate_and_play_the_pointing_game
    "evaluate.heatmap_photos": 0,
}
#: Suggestions per round in :func:`reproduced_pipeline`.
N_SUGGESTED = 5


#: ``python -c REPORT_TENSORFLOW <module> <args>`` runs a stage module as ``python -m`` does, then
#: prints, as its last line, whether TensorFlow was imported (a stage that needs no model should
#: not spend seconds starting it).
REPORT_TENSORFLOW = """import runpy, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def stages_run(output: str) -> set[str]:
    """Names of the stages DVC says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.fixture(scope="session")
def reproduced_pipeline(tmp_path_factory) -> DvcProject:
    """The pipeline after ``dvc repro`` (committed as "baseline run"), built once per session.

    Data: a generated VOC2007 of 60 trainval and 40 test images, plus 20 annotated images of
    another draw, with the next ids, listed in ``ImageSets/Main/pool.txt`` (``data.pool_split:
    pool``), the last of them not a JPEG; params:
    :data:`FAST_PARAMS`, ``suggest.n`` :data:`N_SUGGESTED`, 3 learning-curve folds. Attributes:
    ``first`` (the repro's CompletedProcess) and its ``first_repro_output`` / ``first_repro_stderr``,
    ``voc`` (the VOC2007 folder), ``pool_ids``, ``bad_id`` (the pool's unreadable image).
    Tests use a copy (:func:`copy_project`); the VOC folder is shared: put back what you change.
    """
    from tests.vocgen import make_voc

    root = tmp_path_factory.mktemp("pipeline")
    devkit = make_voc(root / "voc", year=2007, n_train=60, n_eval=40)
    voc = devkit / "VOC2007"
    # the pool: another draw's images (the ones above stay those the pipeline tests were written on)
    other = make_voc(root / "other", year=2007, n_train=20, n_eval=20, seed=1) / "VOC2007"
    last = max(int(path.stem) for path in (voc / "JPEGImages").glob("*.jpg"))
    pool_ids = [f"{last + k:06d}" for k in range(1, 21)]
    for old, new in zip((other / "ImageSets" / "Main" / "trainval.txt").read_text().split(), pool_ids):
        xml = (other / "Annotations" / f"{old}.xml").read_text()
        (voc / "Annotations" / f"{new}.xml").write_text(xml.replace(f"<filename>{old}.jpg<", f"<filename>{new}.jpg<"))
        shutil.copy2(other / "JPEGImages" / f"{old}.jpg", voc / "JPEGImages" / f"{new}.jpg")
    (voc / "ImageSets" / "Main" / "pool.txt").write_text("".join(f"{i}\n" for i in pool_ids))
    bad_id = pool_ids[-1]
    (voc / "JPEGImages" / f"{bad_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")  # a bad pool image
    project = make_dvc_project(root / "baseline", extra=["bench", "tests/__init__.py"], commit=False)
    project.env[CACHE_ENV] = str(root / "user-cache")
    project.set_params({**FAST_PARAMS, "data.source": str(devkit), "data.pool_split": "pool",
                        "suggest.n": N_SUGGESTED, "suggest.curve_folds": 3})
    project.first = project.dvc("repro", check=True, timeout=1800)  # the whole pipeline: room for a busy CPU
    project.first_repro_output, project.first_repro_stderr = project.first.stdout, project.first.stderr
    project.commit("baseline run")
    project.voc, project.pool_ids, project.bad_id = voc, pool_ids, bad_id
    return project


def copy_project(project: DvcProject, root: str | Path) -> DvcProject:
    """A copy of ``project`` in ``root``: its git repo, DVC cache, outputs and attributes, links kept
    as links (the data they point to is shared; a relative link needs ``root`` beside the
    original), with a DVC home of its own."""
    def skip_dvc_tmp(folder, names):  # DVC's locks and queue state belong to the original
        return ["tmp"] if Path(folder) == project.root / ".dvc" else []

    root = Path(root)
    shutil.copytree(project.root, root, symlinks=True, ignore=skip_dvc_tmp)
    home = root.parent / f".{root.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    copy = DvcProject(root=root, home=home, env=dict(project.env))
    copy.__dict__.update({k: v for k, v in vars(project).items() if k not in ("root", "home", "env")})
    return copy
