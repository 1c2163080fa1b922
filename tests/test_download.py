"""stages.download: downloads from a local HTTP server, resume, caches, local sources, errors."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from fewlabel.data import archive, download
from fewlabel.data import source as data_source
from stages import download as download_stage
from fewlabel.errors import PipelineError
from tests.vocgen import TARBALLS, file_md5, make_tarballs, make_voc, md5s, voc_spec

TRAINVAL_2007, TEST_2007 = TARBALLS[2007]


def run_stage(params_file, out: Path, **data) -> None:
    """Run the stage's main() with ``data.*`` params, as ``dvc repro download`` would."""
    path = params_file({f"data.{key}": value for key, value in data.items()})
    download_stage.main(["--out", str(out), "--params", str(path), "--no-progress"])


def assert_voc_tree(voc: Path, year: int, **spec_kwargs) -> None:
    spec = voc_spec(year, **spec_kwargs)
    assert sorted(p.stem for p in (voc / "Annotations").glob("*.xml")) == [i.image_id for i in spec.images]
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == [i.image_id for i in spec.images]
    for split, ids in spec.splits.items():
        assert (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split() == list(ids)


def test_official_tarballs_and_md5_overrides(capsys):
    assert download.tarballs_for(2007) == {TRAINVAL_2007: "c52e279531787c972589f7e41ab4ae64",
                                           TEST_2007: "b6e924de25625d8de591ea690078ad9f"}
    assert download.tarballs_for(2012, {TARBALLS[2012][0]: "A" * 32}) == {TARBALLS[2012][0]: "a" * 32}
    download.tarballs_for(2012, {"other.tar": "0" * 32})
    assert "other.tar" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="data.year=2010"):
        download.tarballs_for(2010)
    assert download.urls_for(TEST_2007, 2007, None) == [
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
        "http://pjreddie.com/media/files/VOCtest_06-Nov-2007.tar"]


@pytest.mark.parametrize("year", [2007, 2012])
def test_download_from_server_links_extracted_tree(year, http_server, params_file, tmp_path, isolated_cache):
    tarballs = make_tarballs(http_server.root, year)
    out = tmp_path / "data" / "raw" / "voc"
    run_stage(params_file, out, year=year, source=http_server.url, md5=md5s(tarballs))

    assert out.is_symlink()
    target = Path(os.readlink(out))
    assert target.is_absolute() and target.name == f"VOC{year}" and target.parent.name == "VOCdevkit"
    assert (isolated_cache / "extracted") in target.parents
    assert_voc_tree(out, year)
    assert sorted(r.name for r in http_server.requests) == sorted(tarballs)
    for name, path in tarballs.items():  # kept in the download cache, complete
        assert file_md5(isolated_cache / "downloads" / name) == file_md5(path)
    assert not list((isolated_cache / "extracted").glob(".tmp-*"))


def test_md5_mismatch_is_a_clear_error_and_leaves_nothing(http_server, params_file, tmp_path, isolated_cache):
    tarballs = make_tarballs(http_server.root, 2007)
    wrong = {**md5s(tarballs), TEST_2007: "0" * 32}
    out = tmp_path / "voc"
    with pytest.raises(PipelineError) as error:
        run_stage(params_file, out, source=http_server.url, md5=wrong)
    message = str(error.value)
    assert f"{http_server.url}{TEST_2007}" in message
    assert "0" * 32 in message and file_md5(tarballs[TEST_2007]) in message
    assert "data.md5" in message
    downloads = isolated_cache / "downloads"
    assert not (downloads / TEST_2007).exists() and not (downloads / f"{TEST_2007}.part").exists()
    assert not out.exists() and not out.is_symlink()


def test_dropped_connection_is_resumed_with_a_range_request(http_server, tmp_path):
    tarballs = make_tarballs(http_server.root, 2007)
    size = tarballs[TEST_2007].stat().st_size
    http_server.cut_after(TEST_2007, size // 2)
    dest = tmp_path / "dl" / TEST_2007
    download.download(http_server.url + TEST_2007, dest, file_md5(tarballs[TEST_2007]), progress=False)

    first, second = http_server.requests_for(TEST_2007)
    assert (first.range, first.status) == (None, 200)
    assert (second.range, second.status) == (f"bytes={size // 2}-", 206)
    assert file_md5(dest) == file_md5(tarballs[TEST_2007])
    assert not dest.with_name(dest.name + ".part").exists()


def test_partial_download_from_an_earlier_run_is_resumed(http_server, tmp_path):
    tarballs = make_tarballs(http_server.root, 2007)
    url, md5 = http_server.url + TEST_2007, file_md5(tarballs[TEST_2007])
    half = tarballs[TEST_2007].stat().st_size // 2
    http_server.cut_after(TEST_2007, half)   # first response dropped half-way,
    http_server.fail(TEST_2007, 503)         # then the server fails: the run gives up
    dest = tmp_path / TEST_2007
    with pytest.raises(download.DownloadError, match="503"):
        download.download(url, dest, md5, progress=False)
    assert dest.with_name(dest.name + ".part").stat().st_size == half and not dest.exists()

    http_server.reset()
    download.download(url, dest, md5, progress=False)  # the next run resumes
    [request] = http_server.requests
    assert (request.range, request.status) == (f"bytes={half}-", 206)
    assert file_md5(dest) == md5


def test_caches_mean_no_request_on_later_runs(http_server, tmp_path, isolated_cache):
    tarballs = make_tarballs(http_server.root, 2007)
    first = data_source.obtain_voc(2007, http_server.url, md5s(tarballs), progress=False)
    assert len(http_server.requests) == 2

    http_server.reset()
    assert data_source.obtain_voc(2007, http_server.url, md5s(tarballs), progress=False) == first
    assert http_server.requests == []  # already extracted

    # Without the extracted tree, the cached tarballs are checked and extracted again.
    import shutil
    shutil.rmtree(isolated_cache / "extracted")
    again = data_source.obtain_voc(2007, http_server.url, md5s(tarballs), progress=False)
    assert http_server.requests == [] and again == first
    assert_voc_tree(again, 2007)


def test_offline_error_names_every_url_and_data_source(unreachable_url, monkeypatch, tmp_path):
    mirror = unreachable_url.replace("127.0.0.1", "localhost")
    monkeypatch.setattr(download, "OFFICIAL_HOSTS", {2007: (unreachable_url, mirror)})
    with pytest.raises(PipelineError) as error:
        data_source.obtain_voc(2007, None, progress=False)
    message = str(error.value)
    assert unreachable_url + TRAINVAL_2007 in message and mirror + TRAINVAL_2007 in message
    assert "data.source" in message and "VOCdevkit" in message and "tarballs" in message

    with pytest.raises(PipelineError) as error:  # a base URL as data.source: the same
        data_source.obtain_voc(2007, unreachable_url, progress=False)
    assert unreachable_url + TRAINVAL_2007 in str(error.value) and "data.source" in str(error.value)


def test_falls_back_to_the_mirror(unreachable_url, http_server, monkeypatch):
    tarballs = make_tarballs(http_server.root, 2007)
    monkeypatch.setattr(download, "OFFICIAL_HOSTS", {2007: (unreachable_url, http_server.url)})
    voc = data_source.obtain_voc(2007, None, md5s(tarballs), progress=False)
    assert_voc_tree(voc, 2007)


def test_a_host_serving_the_wrong_file_falls_back_to_the_mirror(http_server, tmp_path, monkeypatch):
    """E.g. a maintenance page answered with 200: its md5 is wrong, so the mirror is tried."""
    tarballs = make_tarballs(http_server.root / "mirror", 2007)
    (http_server.root / "down").mkdir()
    for name in tarballs:
        (http_server.root / "down" / name).write_text("<html>down for maintenance</html>")
    monkeypatch.setattr(download, "OFFICIAL_HOSTS",
                        {2007: (http_server.url + "down/", http_server.url + "mirror/")})
    voc = data_source.obtain_voc(2007, None, md5s(tarballs), progress=False)
    assert_voc_tree(voc, 2007)


def test_file_url_source(tmp_path):
    tarballs = make_tarballs(tmp_path / "served", 2007)
    voc = data_source.obtain_voc(2007, (tmp_path / "served").as_uri(), md5s(tarballs), progress=False)
    assert_voc_tree(voc, 2007)


def test_local_vocdevkit_is_linked_not_copied(params_file, tmp_path, isolated_cache):
    devkit = make_voc(tmp_path / "mine", 2007)
    for source in (tmp_path / "mine", devkit, devkit / "VOC2007"):
        out = tmp_path / "voc"
        run_stage(params_file, out, source=str(source))
        assert out.is_symlink() and Path(os.readlink(out)) == devkit / "VOC2007"
    for sub in ("extracted", "downloads"):  # nothing extracted or downloaded
        assert not (isolated_cache / sub).exists() or not any((isolated_cache / sub).iterdir())

    with pytest.raises(PipelineError, match="VOC2007 folder but data.year is 2012"):
        data_source.obtain_voc(2012, str(devkit / "VOC2007"), progress=False)
    with pytest.raises(PipelineError, match="not VOC2012"):
        data_source.obtain_voc(2012, str(devkit), progress=False)


def test_folder_of_tarballs_is_checked_and_extracted(tmp_path, isolated_cache):
    tarballs = make_tarballs(tmp_path / "tars", 2012)
    voc = data_source.obtain_voc(2012, str(tmp_path / "tars"), md5s(tarballs), progress=False)
    assert (isolated_cache / "extracted") in voc.parents
    assert_voc_tree(voc, 2012)

    name = TARBALLS[2012][0]
    with pytest.raises(PipelineError) as error:  # without data.md5: the official md5 is expected
        data_source.obtain_voc(2012, str(tmp_path / "tars"), progress=False)
    assert str(tmp_path / "tars" / name) in str(error.value) and "data.md5" in str(error.value)

    make_tarballs(tmp_path / "half", 2007)
    (tmp_path / "half" / TEST_2007).unlink()
    with pytest.raises(PipelineError, match=f"not {TEST_2007}"):
        data_source.obtain_voc(2007, str(tmp_path / "half"), progress=False)


def test_bad_sources_say_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="neither a VOC2007 folder .* nor a folder holding the tarballs"):
        data_source.obtain_voc(2007, str(tmp_path / "empty"), progress=False)
    with pytest.raises(PipelineError, match="does not exist"):
        data_source.obtain_voc(2007, str(tmp_path / "missing"), progress=False)
    with pytest.raises(PipelineError, match="unsupported scheme"):
        data_source.obtain_voc(2007, "ftp://example.com/voc/", progress=False)
    (tmp_path / "partial" / "VOC2007" / "Annotations").mkdir(parents=True)
    with pytest.raises(PipelineError, match="lacks JPEGImages/, ImageSets/Main/"):
        data_source.obtain_voc(2007, str(tmp_path / "partial"), progress=False)


def test_extract_refuses_path_traversal(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name in ("VOCdevkit/VOC2007/ok.txt", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(PipelineError, match=r"'\.\./escaped\.txt' points outside"):
        archive.extract([evil], tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()

    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("VOCdevkit/etc")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(info)
    with pytest.raises(PipelineError, match="points outside"):
        archive.extract([link], tmp_path / "dest2")


def test_interrupted_extraction_leaves_no_half_tree(http_server, monkeypatch, isolated_cache):
    tarballs = make_tarballs(http_server.root, 2007)
    real_extract = archive.extract

    def extract_then_fail(paths, dest, progress=False):
        real_extract(paths[:1], dest, progress)
        raise KeyboardInterrupt

    monkeypatch.setattr(archive, "extract", extract_then_fail)
    with pytest.raises(KeyboardInterrupt):
        data_source.obtain_voc(2007, http_server.url, md5s(tarballs), progress=False)
    assert list((isolated_cache / "extracted").iterdir()) == []

    monkeypatch.setattr(archive, "extract", real_extract)
    assert_voc_tree(data_source.obtain_voc(2007, http_server.url, md5s(tarballs), progress=False), 2007)


def test_link_is_replaced_atomically_but_real_folders_are_kept(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    out = tmp_path / "raw" / "voc"
    data_source.link_dataset(a, out)
    data_source.link_dataset(b, out)
    assert Path(os.readlink(out)) == b
    assert sorted(p.name for p in out.parent.iterdir()) == ["voc"]  # no temp link left

    real = tmp_path / "real"
    (real / "Annotations").mkdir(parents=True)
    with pytest.raises(PipelineError, match="real folder"):
        data_source.link_dataset(a, real)
    assert (real / "Annotations").is_dir()


# --------------------------------------------------------------------------- issue 12: your own folder

def test_dvc_repro_download_never_opens_up_your_own_folder(dvc_project, tmp_path):
    """Item 5: DVC used to chmod the linked folder to 777 when it reran download; the link is
    now a persistent output DVC never deletes, so the user's modes stay as they were."""
    devkit = make_voc(tmp_path / "mine", 2007)
    voc = devkit / "VOC2007"
    folders = (tmp_path / "mine", devkit, voc, voc / "ImageSets" / "Main")
    for folder in folders:
        folder.chmod(0o750)
    dvc_project.set_params({"data.source": str(tmp_path / "mine")})
    first = dvc_project.dvc("repro", "download")
    assert first.returncode == 0, first.stdout + first.stderr

    (voc / "ImageSets" / "Main" / "x.txt").touch()  # the linked output changed: download reruns
    second = dvc_project.dvc("repro", "download")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage 'download'" in second.stdout
    assert {str(f): oct(f.stat().st_mode & 0o777) for f in folders} == {str(f): oct(0o750) for f in folders}
    assert "world-writable" not in second.stdout + second.stderr
    assert Path(os.readlink(dvc_project.path("data", "raw", "voc"))) == voc


def test_a_relative_source_is_read_from_the_repository_root(tmp_path):
    """Item 7: a relative data.source is tried in the run's root, then in the repository the
    run belongs to ($DVC_ROOT: the user's repo when a queued experiment runs in a copy)."""
    repo, copy = tmp_path / "repo", tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    assert data_source.resolve_source_folder("../mine", copy, repo) == tmp_path / "mine"
    (copy / "data").mkdir()
    (repo / "data").mkdir()
    assert data_source.resolve_source_folder("data", copy, repo) == copy / "data"  # the run's own copy first
    assert data_source.resolve_source_folder(str(tmp_path / "mine"), copy, repo) == tmp_path / "mine"
    with pytest.raises(PipelineError) as error:
        data_source.resolve_source_folder("../missing", copy, repo)
    assert f"neither {copy.parent / 'missing'} nor {tmp_path / 'missing'} exists" in str(error.value)
    assert "data.source '../missing'" in str(error.value)


def test_a_relative_source_works_in_a_queued_experiment(dvc_project, tmp_path):
    """Item 7: ``data.source: ../mine`` works under ``dvc repro`` and in a queued experiment,
    which runs in a copy of the repository under .dvc/tmp/exps."""
    import re

    import pandas as pd

    make_voc(tmp_path / "mine", 2007)  # beside the project folder: ../mine from its root
    dvc_project.set_params({"data.source": "../mine", "subset.n_images": 30, "subset.min_per_class": 2})
    dvc_project.commit("relative data.source")
    dvc_project.dvc("exp", "run", "--queue", "-S", "subset.seed=7", "subset", check=True)
    status = dvc_project.run_queue(timeout=300, poll=2)
    names = re.findall(r"^\w+\s+([\w-]+)\s+.*Success", status, flags=re.M)
    assert len(names) == 1, status
    logs = dvc_project.dvc("queue", "logs", names[0], check=True).stdout
    assert f"data/raw/voc -> {tmp_path / 'mine' / 'VOCdevkit' / 'VOC2007'}" in logs, logs

    # The experiment's train.csv, through its dvc.lock and the DVC cache (only the stages up
    # to subset ran, so `dvc exp apply` could not check out the later outputs).
    import yaml
    ref = next(line.split()[-1] for line in dvc_project.git("for-each-ref", "refs/exps", check=True).stdout.splitlines()
               if line.endswith("/" + names[0]))
    lock = yaml.safe_load(dvc_project.git("show", f"{ref}:dvc.lock", check=True).stdout)
    md5 = next(out["md5"] for out in lock["stages"]["subset"]["outs"] if out["path"] == "data/subset/train.csv")
    train = pd.read_csv(dvc_project.path(".dvc", "cache", "files", "md5", md5[:2], md5[2:]), dtype={"image_id": str})
    assert len(train) == 30 and set(train["image_id"]) <= set(voc_spec(2007).splits["trainval"])
