"""``tfship serve``: the local TF-Serving-compatible model server."""

from __future__ import annotations

import sys

from tfship.cli import cli
from tfship.cli.options import CONTEXT, options
from tfship.server import ServeOptions, serve_forever


@cli.command(context_settings=CONTEXT)
@options(flags=ServeOptions)
def serve(flags: ServeOptions) -> None:
    """A local TF-Serving-compatible model server (REST and gRPC).

    For local runs, tests, and hosts without Docker; it is never friendlier than
    tensorflow_model_server: same flags, paths, wire formats, error codes and texts.
    Like the real server it opens no port until every model has a version AVAILABLE
    (an empty base path keeps it waiting), and exits 255 with "Failed to start server"
    on stdout if a first load fails after its retries. It polls the base path for new
    versions and keeps the old version answering until the new one is AVAILABLE.
    Production hosts run TensorFlow Serving itself (tools/install_server.sh).

    \b
    Example:
      tfship serve --model_name digits --model_base_path "$PWD/store/digits"
      curl localhost:8501/v1/models/digits
    """
    sys.exit(serve_forever(flags))
