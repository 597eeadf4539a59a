"""Where a saved model sits inside a folder of artifacts (plain, or a pyfunc model from code),
so training (transfer), the registry and serving find it the same way."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from pipeline.errors import InputError
from pipeline.models.networks import META_FILE, WEIGHTS_FILE


def find_model_dir(root: Path | str) -> Path:
    """The folder under ``root`` holding ``model.json`` and ``model.safetensors``.

    Works for a plain artifact folder and for a pyfunc "models from code" model, whose
    artifacts nest the saved model somewhere below; the shallowest match wins.
    """
    root = Path(root)
    hits = sorted(
        (p.parent for p in root.rglob(META_FILE) if (p.parent / WEIGHTS_FILE).is_file()),
        key=lambda p: (len(p.parts), str(p)),
    )
    if not hits:
        raise InputError(f"no {META_FILE} + {WEIGHTS_FILE} found under {root}")
    return hits[0]


class UntrustedModelError(InputError):
    """A model's source, URI or files are not what radops registered."""


def check_no_climb(uri: str, what: str = "model URI") -> None:
    """Refuse a URI with a ``..`` path segment (plain or percent-encoded)."""
    path = unquote(uri.split("?", 1)[0]).replace("\\", "/")
    if any(part == ".." for part in path.split("/")):
        raise UntrustedModelError(f"refusing {what} {uri!r}: it climbs out of its folder ('..')")
