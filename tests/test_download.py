"""Fetching with checksums, retries, resume and mirrors, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import threading

import pytest

from gm.data import dataset_spec
from gm.data.download import MIRROR_ENV, Remote, fetch_files, file_digest
from gm.errors import ConfigError, DataError

FAST = {"retries": 3, "backoff": 0.01, "timeout": 5.0}


class Server:
    """Serves ``files`` (path -> bytes) with optional misbehaviour, logging every request.

    flaky[path] = n       the first n requests get 503;
    truncate[path] = n    the first n responses announce the full length but send half;
    no_range              ignore Range headers (always answer 200 with the whole file).
    """

    def __init__(self):
        self.files, self.flaky, self.truncate = {}, {}, {}
        self.no_range = False
        self.log: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.log.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    return self.send_error(404)
                if owner.flaky.get(self.path, 0) > 0:
                    owner.flaky[self.path] -= 1
                    return self.send_error(503)
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not owner.no_range:
                    start, status = int(rng.split("=")[1].rstrip("-")), 206
                    if start >= len(body):
                        return self.send_error(416)
                part = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(part)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if owner.truncate.get(self.path, 0) > 0:
                    owner.truncate[self.path] -= 1
                    part = part[: len(part) // 2]
                    self.close_connection = True
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_for(server, name: str, data: bytes, **kw) -> Remote:
    server.files[f"/ds/{name}"] = data
    return Remote(name, (f"{server.url}/ds/{name}",), sha256=kw.pop("sha256", sha(data)), **kw)


PAYLOAD = bytes(range(256)) * 400          # 100 kB


def test_download_verifies_and_leaves_only_the_file(server, tmp_path):
    r = remote_for(server, "a.bin", PAYLOAD)
    (path,) = fetch_files("ds", (r,), tmp_path, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    n = len(server.log)
    fetch_files("ds", (r,), tmp_path, **FAST)          # idempotent: verified, no request
    assert len(server.log) == n


def test_corrupted_file_gives_clear_error_and_writes_nothing(server, tmp_path):
    good = sha(PAYLOAD)
    corrupt = PAYLOAD[:-1] + b"X"
    r = remote_for(server, "c.bin", corrupt, sha256=good)
    with pytest.raises(DataError) as err:
        fetch_files("ds", (r,), tmp_path, **FAST)
    msg = str(err.value)
    assert "c.bin" in msg and good in msg and sha(corrupt) in msg and "Fix:" in msg
    assert list(tmp_path.iterdir()) == []
    assert len(server.log) == 1                 # a checksum mismatch is not retried


def test_flaky_server_is_retried(server, tmp_path):
    r = remote_for(server, "f.bin", PAYLOAD)
    server.flaky["/ds/f.bin"] = 2
    fetch_files("ds", (r,), tmp_path, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert len(server.log) == 3


def test_retries_exhausted_error_leaves_nothing(server, tmp_path):
    r = remote_for(server, "g.bin", PAYLOAD)
    server.flaky["/ds/g.bin"] = 10
    with pytest.raises(DataError, match=r"failed after 2 attempts.*503"):
        fetch_files("ds", (r,), tmp_path, **{**FAST, "retries": 1})
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_resumes_with_range(server, tmp_path):
    r = remote_for(server, "t.bin", PAYLOAD)
    server.truncate["/ds/t.bin"] = 1
    fetch_files("ds", (r,), tmp_path, **FAST)
    assert (tmp_path / "t.bin").read_bytes() == PAYLOAD
    assert server.log[1] == ("/ds/t.bin", f"bytes={len(PAYLOAD) // 2}-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    r = remote_for(server, "n.bin", PAYLOAD)
    server.truncate["/ds/n.bin"] = 1
    server.no_range = True
    fetch_files("ds", (r,), tmp_path, **FAST)
    assert (tmp_path / "n.bin").read_bytes() == PAYLOAD


def test_missing_url_falls_back_to_next_mirror(server, tmp_path):
    r = remote_for(server, "m.bin", PAYLOAD)
    r = Remote(r.name, (f"{server.url}/gone/m.bin", *r.urls), r.sha256)
    fetch_files("ds", (r,), tmp_path, **FAST)
    assert [p for p, _ in server.log] == ["/gone/m.bin", "/ds/m.bin"]


def test_stale_file_is_replaced(server, tmp_path):
    r = remote_for(server, "s.bin", PAYLOAD)
    (tmp_path / "s.bin").write_bytes(b"old")
    fetch_files("ds", (r,), tmp_path, **FAST)
    assert (tmp_path / "s.bin").read_bytes() == PAYLOAD


def test_gzip_content_hash_accepts_a_recompressed_local_copy(server, tmp_path):
    """Debian's case: different .gz bytes, same content -> the local copy is used."""
    served = gzip.compress(PAYLOAD, compresslevel=9, mtime=1)
    r = remote_for(server, "z.gz", served, content="sha256:" + sha(PAYLOAD))
    local = tmp_path / "local"
    local.mkdir()
    (local / "z.gz").write_bytes(gzip.compress(PAYLOAD, compresslevel=1, mtime=2))
    raw = tmp_path / "raw"
    fetch_files("ds", (r,), raw, local_dirs=(local,), **FAST)
    assert server.log == [] and file_digest(raw / "z.gz", gunzip=True) == sha(PAYLOAD)
    (local / "z.gz").write_bytes(gzip.compress(PAYLOAD[:-1]))     # wrong content: download
    fetch_files("ds", (r,), tmp_path / "raw2", local_dirs=(local,), **FAST)
    assert (tmp_path / "raw2" / "z.gz").read_bytes() == served


def test_gzip_with_wrong_content_is_rejected(server, tmp_path):
    served = gzip.compress(PAYLOAD, mtime=0)
    r = remote_for(server, "w.gz", served, content="md5:" + "0" * 32)
    with pytest.raises(DataError, match="md5 of the gunzipped content"):
        fetch_files("ds", (r,), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_unknown_checksum_warns_with_the_digest(server, tmp_path):
    r = remote_for(server, "u.bin", PAYLOAD, sha256=None)
    with pytest.warns(UserWarning, match=sha(PAYLOAD)):
        fetch_files("ds", (r,), tmp_path, **FAST)
    assert (tmp_path / "u.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "binarized_mnist"])
def test_real_dataset_specs_reject_fake_files_from_a_mirror(server, tmp_path, monkeypatch, name):
    """GM_DATA_MIRROR redirects every file to <mirror>/<dataset>/<file>; the recorded
    checksums of the real datasets reject a fake file, naming it and the expected hash."""
    from gm.data import binarized_mnist, fashion_mnist, mnist
    remotes = {"mnist": mnist, "fashion_mnist": fashion_mnist,
               "binarized_mnist": binarized_mnist}[name].REMOTES
    first = remotes[0]
    fake = gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x07") if first.name.endswith(".gz") else b"0 1\n"
    server.files[f"/{name}/{first.name}"] = fake
    monkeypatch.setenv(MIRROR_ENV, server.url)
    kw = {"local_dir": None} if name == "fashion_mnist" else {}
    with pytest.raises(ConfigError, match=f"datasets.{name}.max_tran"):   # prepare's options
        dataset_spec(name).fetch(tmp_path, max_tran=5, **kw)
    with pytest.raises(DataError) as err:
        dataset_spec(name).fetch(tmp_path, retries=1, backoff=0.01, max_train=5, **kw)
    expected = (first.content or "").split(":")[-1] or first.sha256
    assert first.name in str(err.value) and expected in str(err.value)
    assert server.log[0][0] == f"/{name}/{first.name}"
    assert list(tmp_path.iterdir()) == []
