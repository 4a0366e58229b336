"""An image model's ``predict_image_bytes`` signature decodes an encoded image in its graph
as the build's Pillow reads an image folder (``tfship.package.decode_image`` against
``tfship.sources.load_image_folder`` on the same file), and stage 7 sends it the golden
images as PNGs (``tfship.verify._encoded_check``)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from tfship.sources import load_image_folder
from tfship.verify import VerifySettings, _encoded_check


def picture(mode: str, size: tuple[int, int], seed: int = 0):
    """A smooth picture (a gradient and a blob, some noise), as a photo is, in ``mode``."""
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = 255 * (x / max(w - 1, 1)) * 0.6 + 90 * np.exp(-((x - w / 2) ** 2 + (y - h / 3) ** 2) / w)
    rgb = np.stack([base, base[::-1], base.T[:h, :w] if h == w else base * 0.5], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        im.putalpha(128)
        return im
    return im.convert(mode)


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "shape", "within"),
    [
        ("PNG", "L", (8, 8), (8, 8, 1), 0),
        ("JPEG", "L", (8, 8), (8, 8, 1), 0),
        ("BMP", "L", (8, 8), (8, 8, 1), 0),
        ("GIF", "L", (8, 8), (8, 8, 1), 0),
        ("PNG", "RGB", (16, 12), (12, 16, 3), 0),
        ("JPEG", "RGB", (16, 12), (12, 16, 3), 0),
        ("PNG", "RGBA", (16, 12), (12, 16, 3), 0),  # alpha dropped
        ("PNG", "L", (16, 12), (12, 16, 3), 0),  # grey copied to three channels
        ("PNG", "RGB", (16, 12), (12, 16, 1), 1),  # colour to grey: luminance, within 1
        ("PNG", "L", (40, 40), (8, 8, 1), 1),  # resized: antialiased bilinear, within 1
        ("JPEG", "RGB", (50, 37), (16, 16, 3), 1),
    ],
)
def test_the_graph_decodes_an_image_as_the_build_reads_it(tmp_path, fmt, mode, size, shape, within):
    from tfship.package import decode_image

    (tmp_path / "cat").mkdir()
    suffix = {"JPEG": "jpg"}.get(fmt, fmt.lower())
    path = tmp_path / "cat" / f"one.{suffix}"
    picture(mode, size).save(path, fmt)
    built = np.asarray(load_image_folder(tmp_path, [tmp_path / "cat"], shape).images[0:1])[0]
    decoded = decode_image(path.read_bytes(), list(shape)).numpy()
    assert decoded.shape == built.shape == shape
    assert float(np.max(np.abs(decoded - built))) <= within


class Served:
    """Stands in for the serving client: records the request, answers ``scores``."""

    def __init__(self, transport: str, scores) -> None:
        self.transport, self.scores, self.sent = transport, scores, []

    def predict(self, inputs, version=None, signature=None):
        self.sent.append((inputs, version, signature))
        return {"classes": np.array([["0", "1"]] * 2), "scores": np.asarray(self.scores)}


ENCODED = {
    "signature": "predict_image_bytes",
    "input_name": "image_bytes",
    "b64": [base64.b64encode(b"png-1").decode(), base64.b64encode(b"png-2").decode()],
    "outputs": [[0.9, 0.1], [0.2, 0.8]],
}


def test_rest_sends_b64_objects_and_grpc_sends_bytes():
    rest = Served("rest", ENCODED["outputs"])
    check = _encoded_check(rest, {"golden": {"encoded": ENCODED}}, 3, VerifySettings())
    ((inputs, version, signature),) = rest.sent
    assert (version, signature) == (3, "predict_image_bytes")
    assert inputs == {"image_bytes": [{"b64": ENCODED["b64"][0]}, {"b64": ENCODED["b64"][1]}]}
    assert check.name == "predict_image_bytes max abs diff" and check.passed
    grpc = Served("grpc", ENCODED["outputs"])
    assert _encoded_check(grpc, {"golden": {"encoded": ENCODED}}, 3, VerifySettings()).passed
    ((inputs, _, _),) = grpc.sent
    assert list(inputs["image_bytes"]) == [b"png-1", b"png-2"]


def test_other_scores_fail_and_an_older_package_has_no_such_check():
    wrong = Served("rest", [[0.5, 0.5], [0.2, 0.8]])
    check = _encoded_check(wrong, {"golden": {"encoded": ENCODED}}, 3, VerifySettings())
    assert not check.passed and check.value == pytest.approx(0.4)
    assert _encoded_check(wrong, {"golden": {"outputs": []}}, 3, VerifySettings()) is None
