"""The labelling loop against a real Label Studio server (``make setup-labelstudio`` installs it
into ``.venv-labelstudio/``; ``make test`` does that first). The server runs on 127.0.0.1 with a
temporary data folder (a copy of the database ``make setup-labelstudio`` migrated), README's set-up
(local file serving on, document root ``/``) and a user with a legacy API token
(tests/label_studio_server.py).

One round with ``data.pool_split`` (a list inside the training split), then one with
``data.pool_images`` (a folder outside the data set), in one project: ``fewlabel labels push``,
every task's image answers 200 with the file's bytes, annotations made through the API (accept,
change a class, leave one empty, skip one), ``fewlabel labels pull``, ``dvc exp run``: the training
set grows by exactly the labelled ids and the draw does not change.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from fewlabel.active.label_import import local_path
from fewlabel.io import read_lines
from tests.conftest import FAST_PARAMS, free_port, make_dvc_project
from tests.label_studio_server import LABEL_STUDIO, TOKEN, data_folder, environment
from tests.vocgen import make_voc

pytestmark = pytest.mark.slow

START_TIMEOUT = 600  # seconds: a first start without the migrated copy is slow on a busy 2-core machine


def label_studio_command() -> str:
    """The ``label-studio`` executable (``.venv-labelstudio/`` first); skips where it is missing,
    except under CI (``make test`` installs it), where that fails."""
    command = str(LABEL_STUDIO) if LABEL_STUDIO.exists() else shutil.which("label-studio")
    if command is None:
        message = "Label Studio is not installed: make setup-labelstudio"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return command


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    command = label_studio_command()
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = environment()
    data_folder(data / "data")  # a copy of the database make setup-labelstudio migrated
    log = open(data / "server.log", "w")
    process = subprocess.Popen([command, "start", "--no-browser", "--data-dir", str(data / "data"),
                                "--port", str(port), "--internal-host", "127.0.0.1"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"Label Studio did not start within {START_TIMEOUT} s:\n"
                                     + (data / "server.log").read_text()[-3000:])
            time.sleep(2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def api(url: str, method: str, path: str, body=None):
    request = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        payload = answer.read()
    return json.loads(payload) if payload else None


def image_bytes(url: str, image: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url + image, headers={"Authorization": f"Token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def tasks_of(url: str) -> list[dict]:
    project = api(url, "GET", "/api/projects?title=fewlabel%20suggestions")["results"][0]
    request = urllib.request.Request(f"{url}/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true",
                                     headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def fewlabel(project, *args):
    return project.run([sys.executable, "-m", "fewlabel", "labels", *args, "--url", project.ls_url, "--token", TOKEN])


def train_ids(project) -> list[str]:
    return list(pd.read_csv(project.path("data/subset/train.csv"), dtype={"image_id": str})["image_id"])


def check_every_image_loads(url: str) -> list[dict]:
    tasks = tasks_of(url)
    assert tasks
    for task in tasks:
        status, body = image_bytes(url, task["data"]["image"])
        assert status == 200, (task["data"]["image"], status)
        assert body == Path(local_path(task["data"]["image"])).read_bytes()
    return tasks


def annotate(url: str, task: dict, choices: list[str] | None, cancelled: bool = False) -> None:
    result = [] if choices is None else [{"from_name": "labels", "to_name": "image", "type": "choices",
                                          "value": {"choices": choices}}]
    api(url, "POST", f"/api/tasks/{task['id']}/annotations", {"result": result, "was_cancelled": cancelled})


def test_the_loop_against_a_real_label_studio(server, tmp_path):
    root = tmp_path
    devkit = make_voc(root / "voc", year=2007, n_train=90, n_eval=40)
    voc = devkit / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    pool = ids[::3]  # inside the training split: these are never drawn
    (voc / "ImageSets" / "Main" / "pool.txt").write_text("".join(f"{i}\n" for i in pool))
    photos = root / "new photos"  # pool_images: a folder outside the data set (a space in its name)
    photos.mkdir()
    for k, i in enumerate(ids[1:4]):
        shutil.copyfile(voc / "JPEGImages" / f"{i}.jpg", photos / f"holiday_{k}.jpg")
    project = make_dvc_project(root / "project", commit=False)
    project.ls_url = server
    project.env["FEWLABEL_CACHE_DIR"] = str(root / "user-cache")
    # one view, no view choice (not what this test is about): each of the 3 runs extracts faster
    project.set_params({**FAST_PARAMS, "features.image_size": 32, "features.flip_tta": False,
                        "data.source": str(devkit), "data.pool_split": "pool", "suggest.n": 5})
    project.dvc("repro", check=True)
    project.commit("round 0")
    before = train_ids(project)
    assert not set(before) & set(pool)

    # round 1: data.pool_split
    pushed = fewlabel(project, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "5 task(s) imported" in pushed.stdout and "Local Storage added" in pushed.stdout
    tasks = sorted(check_every_image_loads(server), key=lambda t: t["data"]["rank"])
    predicted = tasks[0]["predictions"]
    assert len(tasks) == 5 and predicted  # pre-annotations were accepted by Label Studio
    first = api(server, "GET", f"/api/predictions?task={tasks[0]['id']}")[0]["result"][0]["value"]["choices"]
    annotate(server, tasks[0], first)  # accepted as suggested
    changed = ["sheep"] if first != ["sheep"] else ["cow"]
    annotate(server, tasks[1], changed)  # a class changed
    annotate(server, tasks[2], None)  # left empty: shows none of the classes
    annotate(server, tasks[3], None, cancelled=True)  # skipped
    labelled = [t["data"]["image_id"] for t in tasks[:3]]
    xml_before = (voc / "Annotations" / f"{labelled[2]}.xml").read_text()

    pulled = fewlabel(project, "pull")  # pool_split images have annotations already: refused without --overwrite
    assert pulled.returncode == 1 and "pass --overwrite" in pulled.stderr and "nothing was written" in pulled.stderr
    pulled = fewlabel(project, "pull", "--overwrite")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "1 task(s) skipped, 1 not labelled yet" in pulled.stdout
    assert project.path("suggestions/label_studio_export.json").exists()
    assert sorted(read_lines(project.path("suggestions/labelled.txt"))) == sorted(labelled)
    backups = list((voc / "Annotations").glob(f"{labelled[2]}.xml.bak-*"))  # the emptied one: changed, backed up
    assert len(backups) == 1 and backups[0].read_text() == xml_before
    assert "<object>" not in (voc / "Annotations" / f"{labelled[2]}.xml").read_text()

    run = project.dvc("exp", "run")
    assert run.returncode == 0, run.stdout + run.stderr
    after = train_ids(project)
    assert sorted(after) == sorted(before + labelled)  # the draw kept, exactly the labelled ids added
    assert f"{len(after)} training images ({len(before)} drawn + 3 from suggestions/labelled.txt)" in run.stdout + run.stderr
    suggested = pd.read_csv(project.path("suggestions/next.csv"), dtype={"image_id": str})["image_id"]
    assert not set(suggested) & set(after)  # a suggestion is never a training image
    project.commit("round 1")

    # round 2: data.pool_images, the same project and set-up
    run = project.dvc("exp", "run", "-S", "data.pool_split=null", "-S", f"data.pool_images={photos}")
    assert run.returncode == 0, run.stdout + run.stderr
    # another pool: the round-1 pool is drawable again (the draw changes once, README), the labels stay
    again = train_ids(project)
    assert set(labelled) <= set(again) and not any(i.startswith("holiday_") for i in again)
    assert re.search(rf"{len(again)} training images \(\d+ drawn \+ \d+ from suggestions/labelled.txt",
                     run.stdout + run.stderr)
    pushed = fewlabel(project, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "3 task(s) imported" in pushed.stdout and f"Local Storage added: {photos.resolve()}" in pushed.stdout
    tasks = check_every_image_loads(server)  # both pool kinds' images load
    new = [t for t in tasks if t["data"]["image_id"].startswith("holiday_")]
    assert len(new) == 3
    annotate(server, new[0], ["dog"])
    pulled = fewlabel(project, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    image_id = new[0]["data"]["image_id"]
    assert (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes() == (photos / f"{image_id}.jpg").read_bytes()
    assert "<name>dog</name>" in (voc / "Annotations" / f"{image_id}.xml").read_text()
