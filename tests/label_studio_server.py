"""The Label Studio server of tests/test_label_studio.py: its settings and its database, set up once.

README's set-up (local file serving on, document root ``/``), a user with a legacy API token
(:data:`TOKEN`), no version check. A first start migrates a new database (about 40 s on a
2-core machine); ``make setup-labelstudio`` does that once, into :data:`TEMPLATE`
(``python -m tests.label_studio_server``, ``label-studio init``), and each test run starts from
a copy of it (about 5 s). Standard library only: the Makefile runs it before any virtualenv of
the project is needed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO = REPO_ROOT / ".venv-labelstudio" / "bin" / "label-studio"
#: A migrated data folder with the test user: ``make setup-labelstudio`` writes it.
TEMPLATE = REPO_ROOT / ".venv-labelstudio" / "test-data"
TOKEN = "fewlabel-test-token-0123456789"
SETTINGS = {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/",
            "LABEL_STUDIO_USERNAME": "tests@example.com", "LABEL_STUDIO_PASSWORD": "not-a-secret-1",
            "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}


def environment() -> dict[str, str]:
    """This process's environment with the server's settings."""
    return {**os.environ, **SETTINGS}


def data_folder(folder: Path) -> Path:
    """``folder``, holding a copy of :data:`TEMPLATE` where there is one (else the first start
    migrates a new database there)."""
    if (TEMPLATE / "label_studio.sqlite3").is_file():
        shutil.copytree(TEMPLATE, folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_template(command: str | Path = LABEL_STUDIO, template: Path = TEMPLATE) -> None:
    """Migrate a new database with the test user into ``template`` (built beside it, then renamed)."""
    building = template.with_name(template.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    result = subprocess.run([str(command), "init", "--data-dir", str(building)], env=environment(),
                            capture_output=True, text=True)
    if result.returncode != 0 or not (building / "label_studio.sqlite3").is_file():
        sys.exit(f"label-studio init failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    shutil.rmtree(template, ignore_errors=True)
    building.rename(template)


if __name__ == "__main__":
    make_template()
    print(f"Label Studio's test database: {TEMPLATE}")
