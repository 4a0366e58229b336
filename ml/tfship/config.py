"""Facts of the model's interface and of TF Serving that are not settings.

Settings (defaults a user can change, with their environment variables) are declared beside
the stage that owns them (``tfship.settings``); what is here is fixed by design or by TF
Serving itself.
"""

from __future__ import annotations

import re

# --- The model's interface: one place for the input name and signature. -------------------
INPUT_NAME = "image"
SIGNATURE_NAME = "serving_default"
# An image model's signature on encoded images (PNG, JPEG, BMP, GIF), decoded in its graph:
# REST clients send {"image_bytes": {"b64": "..."}}, as TF Serving base64-decodes strings.
BYTES_SIGNATURE = "predict_image_bytes"
BYTES_INPUT = "image_bytes"
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# --- Stage 1: how a snapshot is split and described. ---------------------------------------
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
PIXEL_BINS = 16
# Images are stored and served as pixel values 0-255 (a decoded PNG/JPEG's range, whatever
# the source's: digits' 0-16 and floats' 0-1 are scaled to it at build); the model divides
# by PIXEL_MAX inside its graph (a Rescaling layer), so clients send pixels, not [0, 1].
PIXEL_MAX = 255.0

# --- Packaging and verification. ------------------------------------------------------------
GOLDEN_BATCH = 8
HELD_OUT_ROWS = 10_000  # test rows a table's package carries for retrain to re-score
HELD_OUT_IMAGE_BYTES = 64 * 1024 * 1024  # ... and an image package, at most these pixels
# The new snapshot's test rows retrain scores champion and challenger on (the first ones of
# test.csv, itself a random split): memory bounded however big the snapshot.
RETRAIN_EVAL_ROWS = 100_000
EXPORT_TOLERANCE = 1e-5  # package: SavedModel vs Keras on the golden batch
SERVING_TOLERANCE = 1e-4  # stage 7: served outputs vs manifest

# --- TF Serving. ----------------------------------------------------------------------------
REST_PORT = 8501  # the official image's REST port (and tfship serve's default)
GRPC_PORT = 8500
AVAILABLE_TIMEOUT = 60.0  # how long a version may take to become AVAILABLE
REQUEST_TIMEOUT = 10.0
