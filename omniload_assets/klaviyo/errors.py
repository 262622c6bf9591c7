"""Errors raised by the Klaviyo client: each message says what happened and what to do."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache


class KlaviyoError(Exception):
    """Base class of every error the Klaviyo client raises."""


class KlaviyoConfigError(KlaviyoError):
    """The resource is misconfigured (no API key, a bad base URL, ...)."""


class KlaviyoAPIError(KlaviyoError):
    """Klaviyo answered with an error status that retrying cannot fix."""

    def __init__(self, message: str, *, status: int, path: str) -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class KlaviyoAuthError(KlaviyoAPIError):
    """401: the API key is missing, malformed or revoked."""


class KlaviyoPermissionError(KlaviyoAPIError):
    """403: the API key lacks the scope the endpoint needs."""


class KlaviyoQuotaExhausted(KlaviyoAPIError):
    """429 with a ``Retry-After`` longer than the client may wait (``max_retry_after_s``).

    ``retry_after_s`` is how long Klaviyo asked to wait: a scheduler can defer the run by it.
    """

    def __init__(self, message: str, *, status: int, path: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message, status=status, path=path)
        self.retry_after_s = retry_after_s


class KlaviyoUnavailableError(KlaviyoError):
    """Retries were used up on server errors, timeouts, or broken responses."""


class KlaviyoPaginationError(KlaviyoError):
    """``links.next`` went somewhere it had already been (a cursor loop), or off the API's host."""


#: Control characters a message may show as a one-letter escape (``\\n``, ``\\t``, ...).
_NAMED_ESCAPES = {"\n": "n", "\r": "r", "\t": "t", "\b": "b", "\f": "f", "\v": "v", "\a": "a", "\0": "0"}
_HTML_NAMES = {'"': "quot", "'": "apos", "&": "amp", "<": "lt", ">": "gt"}


def _hex(value: int, width: int) -> str:
    """A pattern for ``value`` in hexadecimal, ``width`` digits at least, either case."""
    digits = f"{value:0{width}x}"
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)


def _char_forms(char: str) -> str:
    """A pattern for one character of a secret in any form a message may show it in: itself, a
    backslash escape (``repr``, JSON, bytes ``repr``; escaped again any number of times), a
    percent-encoding (``quote``, ``quote_plus``) of its UTF-8 or Latin-1 bytes, or an HTML entity."""
    code = ord(char)
    esc = r"\\+"  # one backslash or more: escaped, or escaped again
    forms = {re.escape(char), esc + "x" + _hex(code, 2), esc + "u" + _hex(code, 4), esc + "U" + _hex(code, 8)}
    forms.add(f"&#0*{code};")
    forms.add("&#[xX]0*" + _hex(code, 1) + ";")
    if char in _HTML_NAMES:
        forms.add(f"&{_HTML_NAMES[char]};")
    if char in "\\'\"/":
        forms.add(esc + re.escape(char))
    if char in _NAMED_ESCAPES:
        forms.add(esc + _NAMED_ESCAPES[char])
    if code < 0x100:
        forms.add(esc + f"{code:03o}")
    if code > 0xFFFF:  # JSON's surrogate pair
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.add(esc + "u" + _hex(high, 4) + esc + "u" + _hex(low, 4))
    if char == " ":
        forms.add(r"\+")
    for encoding in ("utf-8", "latin-1"):
        try:
            raw = char.encode(encoding)
        except UnicodeEncodeError:
            continue
        forms.add("".join("%" + _hex(byte, 2) for byte in raw))
        if len(raw) > 1:
            forms.add("".join(esc + "x" + _hex(byte, 2) for byte in raw))
    return "(?:" + "|".join(sorted(forms)) + ")"


#: A run of backslashes in a secret, in any of the forms of ``_char_forms``.
_BACKSLASHES = r"(?:\\+|(?:%5[cC])+|(?:&#0*92;|&#[xX]0*5[cC];)+)"


@lru_cache(maxsize=8)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    # A run of backslashes is one group (any number of them): escaped k times, a backslash is
    # 2**k of them, and one group per backslash would backtrack without end on long runs.
    runs = re.findall(r"\\+|[^\\]", secret)
    return re.compile("".join(_BACKSLASHES if run[0] == "\\" else _char_forms(run) for run in runs))


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked: raw, ``repr()``/escaped (``\\n``, ``\\x..``,
    ``\\u....``), as a bytes ``repr``, JSON-escaped, percent-encoded, or a mix of these; a last guard
    for messages."""
    if not secret or len(secret) < 4:
        return text
    pattern = _secret_pattern(secret)
    while True:  # masking can join two pieces into the secret again ("**a*" in "**a**a*")
        text, count = pattern.subn("***", text)
        if not count:
            return text


def key_problem(key: str) -> str | None:
    """What keeps ``key`` from being one printable token (``"it contains a line break"``), or None.

    Says which kind of character is wrong, never which character or where: the message must not
    give away any of the key."""
    for char in key:
        if len(f"x{char}x".splitlines()) > 1:  # \n, \r, and the rest of what ends a line
            return "it contains a line break"
        if char == "\t":
            return "it contains a tab"
        if char.isspace():
            return "it contains a space"
        if unicodedata.category(char) in {"Cf", "Cs", "Co", "Cn"}:
            return "it contains an invisible or unassigned character"
        if not char.isprintable():
            return "it contains a control character"
    return None


def key_advice(name: str) -> str:
    """What to do about a key Klaviyo rejected, for a key that came from ``name`` (a variable or flag)."""
    if name == "--source-uri":
        return "pass a valid private API key in --source-uri (klaviyo://?api_key=pk_...)"
    return f"set {name} to a valid private API key"


def retarget_key_advice(message: str, name: str) -> str:
    """``message`` with advice to fix ``KLAVIYO_API_KEY`` aimed at ``name`` instead: the run reads
    the key from the variable even when ``omniload ingest`` got it from ``--source-uri``."""
    if name == "KLAVIYO_API_KEY":
        return message
    return message.replace(key_advice("KLAVIYO_API_KEY"), key_advice(name)).replace("KLAVIYO_API_KEY", name)


def validate_api_key(key: str, name: str = "KLAVIYO_API_KEY") -> str:
    """``key`` without surrounding whitespace, if it is one printable token; else a
    :class:`KlaviyoConfigError` naming ``name`` (the variable or flag to fix), without the key."""
    key = key.strip()
    if not key:
        raise KlaviyoConfigError(f"no Klaviyo API key: set {name} to a private API key (pk_...)")
    problem = key_problem(key)
    if problem is not None:
        raise KlaviyoConfigError(f"{name} is not a single printable token ({problem}): paste the key again")
    return key
