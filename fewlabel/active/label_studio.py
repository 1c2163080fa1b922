"""A Label Studio project for the suggestions, through its REST API (plain HTTP: no SDK to install).

    fewlabel labels push   # project (config), a Local Storage per image folder, the new tasks
    fewlabel labels pull   # export the project as JSON, then `fewlabel labels add` on it

Label Studio serves ``/data/local-files/?d=<path>`` only when local file serving is on, the
path is below its document root (``/``, its default, serves the absolute paths the tasks carry)
and a Local Storage of some project holds the file's folder: ``push`` adds that storage (never
synced, so it imports nothing by itself). The server and the key come from ``--url`` and
``--token`` or ``$LABEL_STUDIO_URL`` and ``$LABEL_STUDIO_API_KEY`` (Account & Settings > Access
Token; a personal access token or a legacy token).
"""
from __future__ import annotations

import json
import os
import posixpath
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fewlabel.active.label_import import local_path
from fewlabel.active.report import LS_IMAGE
from fewlabel.errors import PipelineError

URL_ENV, TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
DEFAULT_TITLE = "fewlabel suggestions"


@dataclass
class Client:
    """The few calls of Label Studio's API that push and pull need."""
    url: str
    token: str
    timeout: float = 60.0
    _auth: str = ""

    @classmethod
    def connect(cls, url: str | None, token: str | None) -> "Client":
        url, token = url or os.environ.get(URL_ENV), token or os.environ.get(TOKEN_ENV)
        if not url or not token:
            raise PipelineError(f"no Label Studio server or key: pass --url and --token, or set ${URL_ENV} (e.g. "
                                f"http://localhost:8080) and ${TOKEN_ENV} (Account & Settings > Access Token)")
        client = cls(url.rstrip("/"), token)
        client._auth = f"Token {token}"
        if token.count(".") == 2:  # a personal access token (a JWT refresh token): trade it for an access token
            access = client.call("POST", "/api/token/refresh", {"refresh": token}, auth=False)
            client._auth = f"Bearer {access['access']}"
        return client

    def call(self, method: str, path: str, body=None, auth: bool = True, raw: bool = False):
        """One API call: the decoded JSON answer (or the bytes, ``raw``); an error names the fix."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:500]
            hint = (f"check the key (--token or ${TOKEN_ENV})" if error.code in (401, 403)
                    else "see Label Studio's answer above")
            raise PipelineError(f"Label Studio {self.url}: {method} {path} answered {error.code} {detail}; "
                                f"{hint}") from error
        except (urllib.error.URLError, OSError) as error:
            raise PipelineError(f"Label Studio {self.url}: not reachable ({getattr(error, 'reason', error)}); start "
                                f"it (see README, 'Labelling more images') or fix --url / ${URL_ENV}") from error
        return payload if raw else (json.loads(payload) if payload else None)


def find_project(client: Client, title: str) -> dict | None:
    """The project titled ``title`` (the first, by id), or None."""
    answer = client.call("GET", f"/api/projects?title={quote(title)}&page_size=1000")
    projects = answer.get("results", []) if isinstance(answer, dict) else answer
    matches = sorted((p for p in projects if p.get("title") == title), key=lambda p: p["id"])
    return matches[0] if matches else None


def export_tasks(client: Client, project_id: int) -> list[dict]:
    """Every task of the project with its annotations (Label Studio's 'JSON' export)."""
    return json.loads(client.call("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true",
                                  raw=True))


def image_folders(tasks: list[dict]) -> list[str]:
    """The folders (absolute) of the tasks' local files, without folders inside another one listed."""
    folders = sorted({posixpath.dirname(local_path(t["data"][LS_IMAGE])) for t in tasks})
    return [f for f in folders if not any(f.startswith(other.rstrip("/") + "/") for other in folders if other != f)]


@dataclass
class Pushed:
    project_id: int
    created: bool
    storages: list[str]
    imported: int
    already: int


def push(client: Client, tasks_file: str | Path, config_file: str | Path, title: str = DEFAULT_TITLE) -> Pushed:
    """Create or update the project ``title``: its labelling config, a Local Storage for each
    folder of the tasks' images, and the tasks whose image_id it does not hold yet."""
    try:
        tasks = json.loads(Path(tasks_file).read_text(encoding="utf-8"))
        config = Path(config_file).read_text(encoding="utf-8")
    except (OSError, json.JSONDecodeError) as error:
        raise PipelineError(f"{getattr(error, 'filename', None) or tasks_file}: cannot be read ({error}); run "
                            f"`dvc exp run` with a pool first (data.pool_split or data.pool_images)") from error
    project = find_project(client, title)
    created = project is None
    if created:
        project = client.call("POST", "/api/projects", {"title": title, "label_config": config})
    elif project.get("label_config") != config:
        client.call("PATCH", f"/api/projects/{project['id']}", {"label_config": config})
    pid = project["id"]
    answer = client.call("GET", f"/api/storages/localfiles?project={pid}")
    have = [s["path"].rstrip("/") for s in answer]
    added = []
    for folder in image_folders(tasks):
        if not any(folder == p or folder.startswith(p + "/") for p in have):
            client.call("POST", "/api/storages/localfiles", {"project": pid, "path": folder, "title": folder,
                                                              "use_blob_urls": False})
            added.append(folder)
    known = {str(t["data"].get("image_id")) for t in export_tasks(client, pid)}
    new = [t for t in tasks if str(t["data"]["image_id"]) not in known]
    if new:
        client.call("POST", f"/api/projects/{pid}/import", new)
    return Pushed(pid, created, added, len(new), len(tasks) - len(new))


def choices_control(config: str) -> str | None:
    """The name of the labelling config's only ``<Choices>`` control (None: none, or several)."""
    import xml.etree.ElementTree as ET
    try:
        names = [e.get("name") for e in ET.fromstring(config).iter("Choices")]
    except ET.ParseError:
        return None
    return names[0] if len(names) == 1 else None


def pull(client: Client, out: str | Path, title: str = DEFAULT_TITLE) -> tuple[Path, str | None]:
    """Export the project ``title`` as JSON into ``out`` (written whole or not at all); returns
    the file and the name of the project's Choices control."""
    from fewlabel.io import write_text

    project = find_project(client, title)
    if project is None:
        raise PipelineError(f"Label Studio {client.url}: no project titled '{title}'; run `fewlabel labels push` "
                            f"first, or pass --project with your project's title")
    write_text(out, json.dumps(export_tasks(client, project["id"]), indent=1) + "\n")
    return Path(out), choices_control(project.get("label_config") or "")
