"""Credentials never leave the process: URLs are shown and stored without them.

Private mirrors and proxies put credentials in the endpoint URL (`https://user:token@mirror`) or in
its query (`?token=...`, a CDN's `X-Amz-Signature`). A `.polar` file's `source`, a model card, a
run's config.json, a log line and an error message are all published or pasted somewhere, so every
URL that goes into one passes through `public_url` first.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query keys that carry a secret: tokens, keys, signatures, passwords, sessions, credentials. A
# key is read as its words (`X-Amz-Signature`, `access_token`, `apiKey`, and all of them run
# together): a word that ends in one of these names (`apikey`, `authtoken`), or starts with one
# that begins no common word (`tokenid`, `sigv4`), is a secret's; `author`, `keyword`, `design`
# or `signal` are not.
_SECRET_WORD = re.compile(
    r"[a-z0-9]*(token|key|secret|sig|signature|pass|passwd|password|pwd|auth|authorization|"
    r"session|sessionid|credential|cred)s?|(token|secret|passw|credential|signature|sigv)[a-z0-9]*"
)
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A scheme starts where no scheme character precedes it: without the lookbehind a long run of
# letters is rescanned from each of its positions, and a reader's time grows with its square.
_SCHEME = r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://"
_URL = re.compile(_SCHEME + r"[^\s'\"<>`|]+")
# A URL's userinfo up to its last "@" before the path; any character but these may appear in a
# password (a quote too), so it is matched apart from the rest of the URL.
_USERINFO = re.compile(f"({_SCHEME})" + r"[^\s/?#]*@")


def public_url(url: str) -> str:
    """`url` without its userinfo (`user:password@`) and without query parameters whose names look
    like secrets; anything that does not parse as a URL is returned unchanged."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:  # an invalid port or IPv6 address: still no userinfo
        return _USERINFO.sub(r"\1", url)
    kept = [(k, v) for k, v in query if not _secret(k)]
    if host == parts.netloc and len(kept) == len(query):
        return url
    return urlunsplit(parts._replace(netloc=host, query=urlencode(kept)))


def _secret(key: str) -> bool:
    words = _WORDS.findall(key)
    return any(_SECRET_WORD.fullmatch(w.lower()) for w in [*words, "".join(words)])


def redact_urls(text: str) -> str:
    """`text` with every URL in it replaced by its `public_url`."""
    return _URL.sub(lambda match: public_url(match.group(0)), _USERINFO.sub(r"\1", text))
