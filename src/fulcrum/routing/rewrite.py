"""What a route changes on the way through: the path, header lines, and the answers it gives itself.

Pure functions over bytes, called only for routes that set the option, so a plain route pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from fulcrum.routing.route import Answer, HeaderEdits, PathRewrite


def header_edits(
    set_: Mapping[str, str], add: Mapping[str, str], remove: Iterable[str]
) -> HeaderEdits | None:
    """Compile ``set`` / ``add`` / ``remove`` into one pass; None when there is nothing to do."""
    cut = {name.lower().encode("latin-1") for name in (*set_, *remove)}
    append = tuple(f"{k}: {v}".encode("latin-1") for k, v in (*set_.items(), *add.items()))
    if not cut and not append:
        return None
    pattern = None
    if cut:
        names = b"|".join(re.escape(n) for n in sorted(cut))
        pattern = re.compile(rb"\r\n(?:" + names + rb")[ \t]*:[^\r\n]*", re.IGNORECASE)
    return HeaderEdits(
        cut=frozenset(cut),
        append=append,
        pattern=pattern,
        raw_append=b"".join(b"\r\n" + line for line in append),
        keys=tuple(b"\r\n" + name + b":" for name in sorted(cut)),
    )


def edit_lines(lines: list[bytes], edits: HeaderEdits) -> list[bytes]:
    """Request header lines (each ``b"Name: value\\r\\n"``) with ``edits`` applied."""
    cut = edits.cut
    if cut:
        lines = [line for line in lines if line[: line.find(b":")].strip().lower() not in cut]
    for line in edits.append:
        lines.append(line + b"\r\n")
    return lines


def edit_head(head: bytes, edits: HeaderEdits) -> bytes:
    """A raw response head (status line and lines, no final blank line) with ``edits`` applied."""
    pattern = edits.pattern
    if pattern is not None:
        head = pattern.sub(b"", head)
    if edits.append:
        head = head + b"\r\n" + b"\r\n".join(edits.append)
    return head


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an origin-form or absolute-form target; the query without its ``?``."""
    if target[:1] != b"/":
        scheme = target.find(b"://")
        if scheme > 0:
            slash = target.find(b"/", scheme + 3)
            target = target[slash:] if slash >= 0 else b"/"
    q = target.find(b"?")
    if q < 0:
        return target, b""
    return target[:q], target[q + 1 :]


def rewrite_path(path: bytes, rw: PathRewrite) -> bytes:
    """``strip_prefix``, then ``rewrite``, then ``add_prefix``; the result always starts with ``/``."""
    strip = rw.strip_prefix
    if strip is not None and path.startswith(strip):
        path = path[len(strip):]
        if not path.startswith(b"/"):
            path = b"/" + path
    regex = rw.regex
    if regex is not None:
        path = regex.sub(rw.replacement, path)
        if not path.startswith(b"/"):
            path = b"/" + path
    add = rw.add_prefix
    if add is not None:
        path = add.rstrip(b"/") + path
    return path


def rewrite_target(target: bytes, rw: PathRewrite) -> bytes:
    """The request target with its path rewritten and its query kept."""
    path, query = split_target(target)
    path = rewrite_path(path, rw)
    return path + b"?" + query if query else path


def redirect_location(answer: Answer, host: bytes, target: bytes) -> bytes:
    """The Location of a redirect route, with ``{host}``, ``{path}``, ``{query}`` and ``{uri}`` filled in."""
    location = answer.location or "/"
    if not answer.location_has_fields:
        return location.encode("latin-1")
    path, query = split_target(target)
    uri = path + b"?" + query if query else path
    text = (
        location.replace("{host}", host.decode("latin-1"))
        .replace("{path}", path.decode("latin-1"))
        .replace("{query}", query.decode("latin-1"))
        .replace("{uri}", uri.decode("latin-1"))
    )
    return text.encode("latin-1")
