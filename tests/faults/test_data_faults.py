"""Data faults at stage 1: downloads cut short or too big, archives that name paths outside
themselves or hold links or bombs, and arrays of the wrong kind.

Each is refused the way any bad input is: exit 2, one line naming the file and the problem,
nothing in the workspace, and no download left in the temp folder.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import stat
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_build_rejected, clean_env, digits_arrays, loopback_http, write_npz
from tfship.sources import leaves_archive

Route = tuple[dict[str, str], Callable[[], Iterable[bytes]]]


@pytest.fixture
def scripted_http():
    """A loopback HTTP server whose answer to each path a test scripts: headers, then a body
    (an iterable of chunks), then the connection is closed, whatever the headers promised."""
    routes: dict[str, Route] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            headers, body = routes[self.path.split("?", 1)[0]]
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for chunk in body():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on the body, as it should
            self.close_connection = True

        def log_message(self, *a):
            pass

    with loopback_http(Handler) as base:
        yield base, routes


@pytest.fixture
def build(cli, tmp_path):
    """``build(*args)``: `tfship build` with its temp folder inside the test's, so a download
    left behind is seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    def _run(*args: str):
        return cli("build", *args, env=clean_env(TMPDIR=str(tmp)))

    yield _run
    assert list(tmp.iterdir()) == [], "a download was left in the temp folder"


def _snapshot() -> bytes:
    images, labels = digits_arrays()
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def _url(base: str, data: bytes) -> str:
    return f"{base}/snap.npz#sha256={hashlib.sha256(data).hexdigest()}"


# Downloads ------------------------------------------------------------------------------------


def test_a_download_shorter_than_its_content_length_is_truncated(build, tmp_path, scripted_http):
    base, routes = scripted_http
    data = _snapshot()
    routes["/snap.npz"] = ({"Content-Length": str(len(data))}, lambda: [data[: len(data) // 2]])
    r = build("--data", _url(base, data))
    assert_build_rejected(r, tmp_path, "truncated download", f"of {len(data)} bytes", "retry")


def test_a_download_declaring_more_than_the_limit_is_refused_before_its_body(
    build, tmp_path, scripted_http
):
    base, routes = scripted_http
    sent = []

    def body():
        for _ in range(1000):  # 64 MB, if anyone read it
            sent.append(1)
            yield b"\0" * 65536

    routes["/snap.npz"] = ({"Content-Length": str(1000 * 65536)}, body)
    r = build("--data", f"{base}/snap.npz#sha256={'1' * 64}", "--max-data-bytes", "100000")
    assert_build_rejected(r, tmp_path, "65536000 bytes is over the 100000 byte limit")
    assert "--max-data-bytes" in r.err


def test_a_download_without_a_length_is_cut_off_at_the_limit(build, tmp_path, scripted_http):
    base, routes = scripted_http
    routes["/snap.npz"] = ({}, lambda: (b"\0" * 65536 for _ in range(100)))
    r = build("--data", f"{base}/snap.npz#sha256={'1' * 64}", "--max-data-bytes", "200000")
    assert_build_rejected(r, tmp_path, "more than the 200000 byte limit")


def test_the_url_is_shown_without_its_password_and_signature(build, tmp_path, scripted_http):
    base, routes = scripted_http
    data = _snapshot()
    routes["/snap.npz"] = ({"Content-Length": str(len(data))}, lambda: [data])
    host = base.removeprefix("http://")
    signed = f"http://reader:s3cr3t-pw@{host}/snap.npz?X-Amz-Signature=f00dfeed"
    r = build("--data", f"{signed}#sha256={'0' * 64}")
    assert_build_rejected(r, tmp_path, "sha256 mismatch", f"{base}/snap.npz:")
    assert "s3cr3t-pw" not in r.err and "f00dfeed" not in r.err

    ok = build("--data", signed, "--data-sha256", hashlib.sha256(data).hexdigest(), "--json")
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["origin"] == f"{base}/snap.npz"
    manifest = (tmp_path / "workspace" / "data" / "manifest.json").read_text()
    assert "s3cr3t-pw" not in manifest and "f00dfeed" not in manifest


# Archives -------------------------------------------------------------------------------------


def _npz_with(path: Path, extra: zipfile.ZipInfo | str, payload: bytes = b"") -> Path:
    """A real np.savez snapshot plus one hand-made member."""
    path.write_bytes(_snapshot())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(extra, payload or _npy(np.zeros(3)))
    return path


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _link(name: str, to: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "needle"),
    [
        ("../escape.npy", "'../escape.npy' points outside the archive"),
        ("x/../../escape.npy", "'x/../../escape.npy' points outside the archive"),
        ("/etc/cron.d/escape.npy", "'/etc/cron.d/escape.npy' points outside the archive"),
        ("..\\escape.npy", "points outside the archive"),
        ("C:escape.npy", "'C:escape.npy' points outside the archive"),
        (_link("images2.npy", "/etc/passwd"), "'images2.npy' is a symbolic link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash", "drive", "symlink"],
)
def test_an_npz_with_a_member_outside_it_or_a_link_is_refused(build, tmp_path, member, needle):
    path = _npz_with(tmp_path / "snap.npz", member)
    assert_build_rejected(build("--data", str(path)), tmp_path, "snap.npz", needle, "np.savez")


@pytest.mark.parametrize(
    ("name", "leaves"),
    [
        ("../x.png", True),
        ("cat/../../x.png", True),
        ("/etc/x.png", True),
        ("\\x.png", True),
        ("cat\\..\\..\\x.png", True),
        ("C:x.png", True),
        ("d:/x.png", True),
        ("cat/x.png", False),
        ("cat/12:30.png", False),  # a name with a colon, as macOS and Linux allow
        ("12:30.png", False),
        ("cat/..x.png", False),
        ("images.npy", False),
    ],
)
def test_one_rule_says_which_archive_members_leave_the_folder(name, leaves):
    # The same rule for .npz snapshots and for .zip / .tar.gz image folders.
    assert leaves_archive(name) is leaves


def test_a_downloaded_npz_that_unpacks_past_the_limit_is_refused_before_it_is_read(
    build, tmp_path, scripted_http
):
    images, labels = digits_arrays()
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=images, labels=labels, pad=np.zeros(4_000_000, np.uint8))
    data = path.read_bytes()
    assert len(data) < 300_000  # small on the wire ...
    base, routes = scripted_http
    routes["/bomb.npz"] = ({"Content-Length": str(len(data))}, lambda: [data])
    digest = hashlib.sha256(data).hexdigest()
    r = build("--data", f"{base}/bomb.npz#sha256={digest}", "--max-data-bytes", "1000000")
    assert_build_rejected(r, tmp_path, "bomb.npz", "unpacks to", "over the 1000000 byte limit")


def test_a_local_npz_is_not_capped_it_is_streamed_from_disk(build, tmp_path):
    # The cap is for downloads: a local file is the user's own, read a chunk at a time (its
    # deflated images inflated to a temporary file), whatever its size.
    images, labels = digits_arrays()
    path = tmp_path / "big.npz"
    np.savez_compressed(path, images=images, labels=labels, pad=np.zeros(4_000_000, np.uint8))
    r = build("--data", str(path), "--max-data-bytes", "1000000")
    assert r.code == 0, r.err


# Arrays of the wrong kind -----------------------------------------------------------------


def test_ragged_images_saved_as_objects_are_refused_without_unpickling(build, tmp_path):
    images, labels = digits_arrays()
    ragged = np.empty(len(images), dtype=object)
    ragged[:] = list(images)
    ragged[900] = images[900][:7]  # one image of another shape in the middle of the batch
    path = tmp_path / "ragged.npz"
    np.savez(path, images=ragged, labels=labels)  # pickles the object array
    r = build("--data", str(path))
    assert_build_rejected(r, tmp_path, "ragged.npz", "holds Python objects", "numeric array")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda x, y: (x, y.astype(str)), "labels have dtype <U21, expected integers"),
        (lambda x, y: (x.astype(np.complex64), y), "images have dtype complex64"),
        (lambda x, y: (x.astype(bool), y), "images have dtype bool"),
        (lambda x, y: (x, y + 0.5), "labels are not whole numbers"),
        (
            lambda x, y: (x.astype(np.int32) * 300, y),
            "pixel values span [0, 72000], expected [0, 255]",
        ),
    ],
    ids=["string-labels", "complex-images", "bool-images", "fractional-labels", "pixels>255"],
)
def test_arrays_of_the_wrong_dtype_are_refused(build, tmp_path, mutate, needle):
    x, y = mutate(*digits_arrays())
    path = write_npz(tmp_path / "typed.npz", x, y)
    assert_build_rejected(build("--data", str(path)), tmp_path, "typed.npz", needle)


def test_a_csv_row_of_another_width_in_the_middle_is_refused_by_line(build, tmp_path):
    images, labels = digits_arrays()
    rows = [
        ",".join(map(str, [lab, *img.ravel()])) for img, lab in zip(images, labels, strict=True)
    ]
    rows[900] = rows[900].rsplit(",", 1)[0]  # one pixel short
    path = tmp_path / "snap.csv"
    path.write_text("\n".join(rows) + "\n")
    r = build("--data", str(path))
    assert_build_rejected(r, tmp_path, "snap.csv", "line 901 has 64 columns, the first row has 65")
