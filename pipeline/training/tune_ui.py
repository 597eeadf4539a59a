"""``make tune-ui``: optuna-dashboard over the study storage in force, on 127.0.0.1.

The storage is the one ``tune`` uses: ``RADOPS_OPTUNA_STORAGE``, ``.radops/optuna-storage``,
the stack's PostgreSQL while ``make stack`` is up, else ``tune.storage`` (SQLite), or its
journal file when ``tune.workers`` > 1. It is opened here, in Python, so a password in the URL
never appears on a command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import catalog

HOST = "127.0.0.1"


def storage_url(params_file: str | Path = catalog.PARAMS_FILE) -> str:
    from pipeline.config import load_params
    from pipeline.credentials import optuna_storage
    from pipeline.training.parallel_tune import shared_storage

    params = load_params(params_file)
    url = optuna_storage(params)
    return shared_storage(url) if params.tune.workers > 1 else url


def main(argv: list[str] | None = None) -> None:
    from optuna_dashboard import run_server

    from pipeline.credentials import redact_url
    from pipeline.errors import RadopsError
    from pipeline.training.search import open_storage

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--params", default=str(catalog.PARAMS_FILE))
    args = parser.parse_args(argv)
    try:
        url = storage_url(args.params)
        storage = open_storage(url)
    except RadopsError as exc:
        print(f"radops: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"optuna-dashboard over {redact_url(url)} on http://{HOST}:{args.port}", flush=True)
    run_server(storage, host=HOST, port=args.port)


if __name__ == "__main__":
    main()
