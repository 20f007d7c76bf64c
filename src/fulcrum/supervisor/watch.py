"""``fulcrum run --watch``: reload when the config file changes, found by polling its metadata.

Polling ``os.stat`` once a second costs nothing measurable and works everywhere (bind mounts,
Kubernetes ConfigMaps swapped by symlink, editors that replace the file), where inotify would not.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

log = logging.getLogger("fulcrum")

Stamp = tuple[int, int, int, int] | None


def stamp(path: str) -> Stamp:
    """What changes when the file is written or replaced: inode, device, size, modification time."""
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap's swapped link target counts
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


async def watch_file(path: str, on_change: Callable[[], Awaitable[object]], interval: float = 1.0) -> None:
    """Call ``on_change`` each time ``path`` has changed and then stayed the same for one more interval
    (so a file still being written is read once, whole). A file that disappears is waited for."""
    seen = stamp(path)
    while True:
        await asyncio.sleep(interval)
        now = stamp(path)
        if now == seen or now is None:
            continue
        await asyncio.sleep(interval)
        settled = stamp(path)
        if settled != now:  # still being written: look again next time
            continue
        seen = settled
        log.info("%s changed: reloading", path)
        try:
            await on_change()
        except Exception:  # the watcher must outlive a failed reload
            log.exception("reload after a change of %s failed", path)
