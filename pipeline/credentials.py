"""Credentials for the Optuna storage and the MLflow tracking store: never in ``params.yaml``.

``params.yaml`` is a DVC params file, so every value a stage reads is copied verbatim into the
git-tracked ``dvc.lock``. A URL that needs a password therefore comes from the environment
or from a private file under ``.radops/`` instead:

=====================  ==========================================  ===========================
setting                environment (wins)                          or a 0600 file
=====================  ==========================================  ===========================
``tune.storage``       ``RADOPS_OPTUNA_STORAGE``                   ``.radops/optuna-storage``
``base.tracking_uri``  ``MLFLOW_TRACKING_URI`` (+ MLflow's own      ``.radops/tracking-uri``
                       ``MLFLOW_TRACKING_USERNAME/PASSWORD``)
=====================  ==========================================  ===========================

While ``make stack`` is up, its ``.radops/stack/env`` comes next (before ``params.yaml``).
PostgreSQL also reads ``PGPASSWORD`` or ``~/.pgpass`` itself, so ``params.yaml`` may keep a
password-less ``postgresql://user@host/db``. The config loader refuses a params value that
carries a password (:func:`password_in`), and everything that logs a URL passes it through
:func:`redact_url`, which parses it (``urllib.parse``) instead of pattern-matching it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline import catalog
from pipeline.errors import SecretError

if TYPE_CHECKING:
    from pipeline.config import Params

STORAGE_ENV = "RADOPS_OPTUNA_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
STORAGE_FILE = catalog.OPTUNA_STORAGE_FILE
TRACKING_FILE = catalog.TRACKING_URI_FILE
MASK = "***"
# Query keys whose value is a secret (case-insensitive; any key containing "password", and
# any ending in one of SECRET_KEY_SUFFIXES: ``auth_token``, ``client_secret`` ...).
SECRET_QUERY_KEYS = frozenset(
    {
        "pwd",
        "passwd",
        "secret",
        "token",
        "access_token",
        "auth_token",
        "client_secret",
        "api_key",
        "apikey",
        "sslkey",
        "sig",  # Azure SAS signature
        "signature",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "x-goog-signature",
        "x-goog-credential",
    }
)
SECRET_KEY_SUFFIXES = ("token", "secret", "signature", "passwd")
# Schemes whose userinfo is always a credential, even without a password: an HTTP(S) URL's
# user part is a token (``https://<token>@host``) as often as a name.
HTTP_SCHEMES = frozenset({"http", "https"})
# Settings that may hold a URL, with where their credentials belong instead.
URL_SETTINGS = {
    "tune.storage": (STORAGE_ENV, STORAGE_FILE),
    "base.tracking_uri": (TRACKING_ENV, TRACKING_FILE),
}
# The host part of an authority: a name, IPv4 or [IPv6], an optional port.
_HOST_RE = re.compile(r"(?:[\w.\-%~]*|\[[0-9A-Fa-f:.%\w]*\])(?::\d*)?")


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return "password" in k or k in SECRET_QUERY_KEYS or k.endswith(SECRET_KEY_SUFFIXES)


def _is_http(prefix: str) -> bool:
    """Whether ``scheme://`` (``_split_authority``'s first part) is HTTP(S), also as the last
    part of a compound scheme (``git+https://``)."""
    match = re.search(r"([A-Za-z][\w+.\-]*)://$", prefix)
    return match is not None and match.group(1).lower().rsplit("+", 1)[-1] in HTTP_SCHEMES


def _split_authority(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, host_and_rest)`` of ``scheme://userinfo@host...``; None when
    the URL has no userinfo.

    The userinfo ends at the last ``@`` that is followed by a plausible host, so a password
    holding a raw ``@``, ``:``, ``/`` or ``?`` (not percent-encoded) is still recognised.
    """
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    body = url[start:]
    best = None
    for i, ch in enumerate(body):
        if ch != "@":
            continue
        tail = body[i + 1 :]
        host = _HOST_RE.match(tail)
        end = host.end() if host else 0
        if end and (end == len(tail) or tail[end] in "/?#"):
            best = i
    if best is None:
        # urllib's own reading (e.g. an empty host) as a fallback
        netloc = urlsplit(url).netloc
        if "@" not in netloc:
            return None
        best = body.find(netloc) + netloc.rfind("@")
    return url[:start], body[:best], body[best + 1 :]


def password_in(url: str) -> str | None:
    """Where ``url`` carries a secret ("userinfo password", "query parameter 'x'"), or None."""
    if not isinstance(url, str) or not url:
        return None
    parts = _split_authority(url)
    if parts is not None:
        _user, sep, password = parts[1].partition(":")
        if sep and password:
            return "a password in the URL's user part"
        if parts[1] and _is_http(parts[0]):
            return "credentials in the HTTP(S) URL's user part"
    query = urlsplit(url).query if "?" in url else ""
    if parts is not None and "?" in parts[2]:
        query = parts[2].split("?", 1)[1].split("#", 1)[0]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if _is_secret_key(key) and value:
            return f"a secret query parameter {key!r}"
    return None


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Anything that is not a URL is returned unchanged.
    """
    if not isinstance(url, str) or "://" not in url:
        return url
    parts = _split_authority(url)
    redacted = url
    if parts is not None:
        prefix, userinfo, rest = parts
        user, sep, password = userinfo.partition(":")
        if userinfo and _is_http(prefix):  # a token as user name, or user:password
            userinfo = MASK
        elif sep and password:
            userinfo = f"{user}:{MASK}"
        redacted = f"{prefix}{userinfo}@{rest}"
    split = urlsplit(redacted)
    if split.query:
        pairs = parse_qsl(split.query, keep_blank_values=True)
        if any(_is_secret_key(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _is_secret_key(k) else v) for k, v in pairs], safe="*")
            redacted = urlunsplit(split._replace(query=query))
    return redacted


_URL_WORD = re.compile(r"[A-Za-z][\w+.\-]*://\S+")


def redact_text(text: str) -> str:
    """Every URL-looking word in ``text`` redacted (for log and error messages)."""
    return _URL_WORD.sub(lambda m: redact_url(m.group(0)), text)


def secret_in_text(text: str) -> str | None:
    """Where any URL in ``text`` carries a secret (as ``password_in``), or None."""
    if not isinstance(text, str) or "://" not in text:
        return None
    for word in [text, *_URL_WORD.findall(text)]:
        where = password_in(word)
        if where:
            return where
    return None


def strings_in(tree: object, key: str = "") -> list[tuple[str, str]]:
    """``(dotted key, text)`` of every string in a parsed params tree (list items as
    ``key[i]``), so no field is left unchecked because it is not a known URL setting."""
    if isinstance(tree, str):
        return [(key or "(top level)", tree)]
    if isinstance(tree, dict):
        return [
            hit for k, v in tree.items() for hit in strings_in(v, f"{key}.{k}" if key else str(k))
        ]
    if isinstance(tree, list | tuple):
        return [hit for i, v in enumerate(tree) for hit in strings_in(v, f"{key}[{i}]")]
    return []


def check_params_urls(values: dict[str, str]) -> None:
    """Refuse a params value (``{"tune.storage": url, ...}``, or every string of the tree
    from ``strings_in``) that carries a credential; the message never shows the value."""
    for key, url in values.items():
        where = secret_in_text(url)
        if where:
            env, path = URL_SETTINGS.get(key, (None, None))
            instead = (
                f"set the full URL in the environment variable {env} or in the file {path} "
                f"(mode 600), and keep {key} password-free (or empty)"
                if env
                else "move the credential to the environment"
            )
            raise SecretError(
                f"params.yaml: {key}: holds {where}; params.yaml is copied into the "
                f"git-tracked dvc.lock, so credentials must not be there: {instead}. "
                "(value not shown)"
            )


def _from_file(path: Path) -> str | None:
    from pipeline.secrets import read_private

    if not path.exists() and not path.is_symlink():
        return None
    return read_private(path).decode("utf-8").strip() or None


def optuna_storage(params: Params) -> str:
    """The Optuna storage URL in force: environment, then ``.radops/``, then params."""
    return (
        os.environ.get(STORAGE_ENV)
        or _from_file(STORAGE_FILE)
        or _from_stack(STORAGE_ENV)
        or params.tune.storage
    )


def tracking_uri_setting(params: Params) -> str:
    """The tracking URI set by the user: environment, then ``.radops/``, then params ('' if
    none: the local SQLite store)."""
    return (
        os.environ.get(TRACKING_ENV)
        or _from_file(TRACKING_FILE)
        or _from_stack(TRACKING_ENV)
        or params.base.tracking_uri
    )


def _from_stack(key: str) -> str | None:
    """The setting of ``make stack`` while it is up (``pipeline/stack_env.py``)."""
    from pipeline import stack_env

    return stack_env.settings().get(key) or None


class RedactingFilter:
    """A logging filter that redacts URLs in every record it passes (message and arguments)."""

    def filter(self, record: object) -> bool:
        import logging

        if isinstance(record, logging.LogRecord) and "://" in str(record.msg) + str(record.args):
            record.msg = redact_text(record.getMessage())
            record.args = None
        return True


def install_log_redaction() -> None:
    """Redact URLs in everything the root logger's handlers write (the CLI calls this)."""
    import logging

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
