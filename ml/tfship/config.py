"""Defaults, thresholds and names: each fact stated once.

Every CLI option takes its default from here and names its environment variable here, so
the orb, the README and the code cannot disagree.
"""

from __future__ import annotations

import re

# --- The model's interface: one place for the input name and signature. -------------------
INPUT_NAME = "image"
OUTPUT_NAME = "output_0"  # Keras 3 export names a single output `output_0`.
SIGNATURE_NAME = "serving_default"
DEFAULT_MODEL_NAME = "digits"
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# --- Stage 1: data. --------------------------------------------------------------------
DEFAULT_DATA = "digits"
DEFAULT_NUM_CLASSES = 10
DEFAULT_SEED = 42
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
MIN_ROWS_PER_CLASS = 5
MAX_LABEL_DRIFT = 0.10  # total variation distance between train and test label histograms
MAX_PIXEL_DRIFT = 0.10  # total variation distance between 16-bin pixel-intensity histograms
MAX_DATA_BYTES = 512 * 1024 * 1024
PIXEL_BINS = 16

# --- Stage 2: train. -------------------------------------------------------------------
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
PATIENCE = 4

# --- Stage 3: gates. -------------------------------------------------------------------
MIN_ACCURACY = 0.90  # the default CNN reaches 0.97-1.0 on the default data in 6 epochs
MIN_CLASS_RECALL = 0.75
GOLDEN_BATCH = 8
EXPORT_TOLERANCE = 1e-5  # package: SavedModel vs Keras on the golden batch
SERVING_TOLERANCE = 1e-4  # stage 7: served outputs vs manifest

# --- Retrain. --------------------------------------------------------------------------
RETRAIN_TOLERANCE = 0.005
FINE_TUNE_LEARNING_RATE = 1e-3  # a third of LEARNING_RATE: adapt, do not forget
MAX_CLASS_DROP = 0.10  # ~50 held-out rows per class: one row is 0.02 of recall

# --- Serving / deploy. -----------------------------------------------------------------
REST_PORT = 8501
GRPC_PORT = 8500
POLL_SECONDS = 1.0
AVAILABLE_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
KEEP_VERSIONS = 3
LOCK_STALE_SECONDS = 900

# --- Environment variable names (the CircleCI sample's names where they exist). -----------
ENV = {
    "workspace": "TFSHIP_WORKSPACE",
    "store": "TFSHIP_STORE",
    "model_name": "MODEL_NAME",
    "data": "TFSHIP_DATA",
    "data_sha256": "TFSHIP_DATA_SHA256",
    "seed": "TFSHIP_SEED",
    "num_classes": "TFSHIP_NUM_CLASSES",
    "epochs": "TFSHIP_EPOCHS",
    "batch_size": "TFSHIP_BATCH_SIZE",
    "learning_rate": "TFSHIP_LEARNING_RATE",
    "model_fn": "TFSHIP_MODEL_FN",
    "min_accuracy": "TFSHIP_MIN_ACCURACY",
    "min_class_recall": "TFSHIP_MIN_CLASS_RECALL",
    "min_rows_per_class": "TFSHIP_MIN_ROWS_PER_CLASS",
    "max_label_drift": "TFSHIP_MAX_LABEL_DRIFT",
    "max_pixel_drift": "TFSHIP_MAX_PIXEL_DRIFT",
    "max_data_bytes": "TFSHIP_MAX_DATA_BYTES",
    "version": "TFSHIP_VERSION",
    "hostname": "DEPLOY_SERVER_HOSTNAME",
    "username": "DEPLOY_SERVER_USERNAME",
    "path": "DEPLOY_SERVER_PATH",
    "port": "DEPLOY_SERVER_PORT",
    "ssh_key": "DEPLOY_SERVER_SSH_KEY",
    "ssh_key_file": "DEPLOY_SERVER_SSH_KEY_FILE",
    "password": "DEPLOY_SERVER_PASSWORD",
    "known_hosts": "DEPLOY_SERVER_KNOWN_HOSTS",
    "serving_url": "TF_SERVING_URL",
}
