"""Passwords in URL settings never shown or stored: masking, and taking credentials out of URLs.

A URL setting (``logger.tracking_uri``, ``hydra.sweeper.storage``, ``data.url_override``) may carry
a password in its userinfo: ``http://user:S3cret@host/``, ``postgresql+psycopg2://optuna:S3cret@db/optuna``.
Whatever the project prints, logs or writes shows it as ``http://user:***@host/``. Better still, keep
passwords out of URLs: MLflow reads ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
PostgreSQL ``~/.pgpass`` or ``PGPASSWORD``.

The bottom layer: nothing here imports the rest of the package (but its errors).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from cappuccino.errors import ConfigError

MASK = "***"

# ``scheme://user:password@``: the password runs to the last "@" before whitespace or a quote, so
# a raw "@" or "/" in it (invalid, but SQLAlchemy takes "/") is hidden too. Over-masking a rare
# "host:port/path?q=a@b" is the price; the username is kept.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s'\"]*:)(?P<password>[^\s'\"]*)(?=@)"
)

# How to keep each kind of password out of URLs, for the messages that refuse one.
ADVICE = (
    "keep passwords out of URLs: for an MLflow server set MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials); for PostgreSQL use ~/.pgpass or PGPASSWORD"
)


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (the username kept).

    ``http://user:S3cret@host/`` -> ``http://user:***@host/``; URLs without a password (``sqlite:///x.db``,
    ``http://host:5000``) and file paths are returned as they are.
    """
    return _USERINFO.sub(lambda m: m["head"] + MASK if m["password"] else m[0], url)


def mask_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL password (as ``mask_url``) and every non-empty string of ``secrets``
    replaced by ``***``: for messages that may quote a secret outside a URL (an exception text)."""
    text = mask_url(text)
    # Longest first: a secret inside another must not leave the rest of the longer one visible.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class Masker:
    """``mask_text`` with secrets held for later texts; its ``repr`` shows none of them, so an
    object keeping one (a tracker) can be printed or logged whole."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s}))

    def __call__(self, text: str) -> str:
        return mask_text(text, self._secrets)

    def __add__(self, secrets: Iterable[str | None]) -> Masker:
        return Masker((*self._secrets, *secrets))

    def __repr__(self) -> str:
        return f"Masker({len(self._secrets)} secrets)"


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URL with a (non-empty) password."""
    return any(match["password"] for match in _USERINFO.finditer(text))


def credentials_from_url(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``, the names percent-decoded.

    ``http://user:S3cret@host:5000/`` -> ``("http://host:5000/", "user", "S3cret")``; no userinfo
    (or no ``scheme://``, a file path) -> ``(url, None, None)``; a username alone (or an empty
    password) -> password None.
    As RFC 3986 (and ``requests``) read it: the userinfo ends at the last "@" of the authority.
    """
    if "://" not in url:
        return url, None, None
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    username, _, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host))
    return clean, unquote(username) or None, unquote(password) or None


def url_secrets(url: str) -> list[str]:
    """The password of ``url`` as written and percent-decoded (empty without one): what to mask
    in texts that quote the URL either way."""
    try:
        _, _, password = credentials_from_url(url)
    except ValueError:  # not a URL urlsplit reads (e.g. a broken IPv6 host): the raw form still counts
        password = None
    raw = [m["password"] for m in _USERINFO.finditer(url) if m["password"]]
    return [s for s in {*raw, password} if s]


def refuse_passwords(config: Mapping[str, Any] | Sequence[Any] | str, where: str = "") -> None:
    """Raise ``ConfigError`` naming the first setting (dotted key) or command-line argument of
    ``config`` whose value is a URL with a password; the message shows it masked.

    ``config`` is a plain container (``OmegaConf.to_container``), a list of command-line
    arguments, or one string; ``where`` prefixes the key (``"hydra.sweeper."``).
    """
    for key, value in _leaves(config, where):
        if has_password(value):
            what = f"{key}: " if key else ""
            raise ConfigError(f"{what}a password in a URL ({mask_url(value)}) would be logged and stored; {ADVICE}")


def exit_on_url_passwords(arguments: Sequence[str]) -> None:
    """For an entry point, before Hydra sees ``arguments`` (its command line): a URL with a
    password there ends the program with status 2 and a one-line, masked message, as a
    ``UserError`` does. Hydra copies the arguments into ``.hydra/overrides.yaml``, ``hydra.yaml``,
    ``config.yaml``, ``train.log`` and its "Error executing job with overrides" line before any
    of the job's code runs, so this is the last moment to keep a password out of them."""
    try:
        refuse_passwords(list(arguments))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _leaves(node: Any, prefix: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, str):
        yield prefix.rstrip("."), node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, Sequence):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{prefix}{index}." if prefix else "")


__all__ = [
    "ADVICE",
    "MASK",
    "Masker",
    "credentials_from_url",
    "exit_on_url_passwords",
    "has_password",
    "mask_text",
    "mask_url",
    "refuse_passwords",
    "url_secrets",
]
