"""The request headers of a desktop browser's page load, shared by the benchmarks that send them.

Fourteen headers as Chrome on Linux sends them for a navigation (the Host header comes from the
client: wrk adds it, ``hotloop.py`` writes its own), so that a benchmark's request is as large and as
varied as real traffic rather than wrk's one-header GET.
"""

from __future__ import annotations

BROWSER_HEADERS: tuple[str, ...] = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Cookie: session=3f2a9c1e7b4d4e0f9a8b7c6d5e4f3a2b; theme=dark; _ga=GA1.1.123456789.1700000000",
    "Referer: http://127.0.0.1/index.html",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-User: ?1",
    'Sec-Ch-Ua: "Chromium";v="131", "Not_A Brand";v="24"',
    'Sec-Ch-Ua-Platform: "Linux"',
    "Cache-Control: max-age=0",
)


def wrk_header_args() -> tuple[str, ...]:
    """The headers as wrk's ``-H`` arguments."""
    return tuple(arg for header in BROWSER_HEADERS for arg in ("-H", header))
