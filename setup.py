"""Build script: the per-request modules are compiled with mypyc when it is available.

They stay plain, type-checked Python; compiling them to C removes most of the
interpreter's cost per request (see benchmarks/README.md). ``FULCRUM_PURE=1``
builds without compiling (the one C module included), and a build without mypyc
compiles only the C module.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup

#: Modules on the path of every request and every byte.
COMPILED = [
    "src/fulcrum/proxy/downstream.py",
    "src/fulcrum/proxy/rawhead.py",
    "src/fulcrum/proxy/h2stream.py",
    "src/fulcrum/proxy/exchange.py",
    "src/fulcrum/proxy/upstream.py",
    "src/fulcrum/proxy/context.py",
    "src/fulcrum/proxy/tunnel.py",
    "src/fulcrum/proxy/tcp.py",
    "src/fulcrum/state/server.py",
    "src/fulcrum/state/group.py",
    "src/fulcrum/state/snapshot.py",
    "src/fulcrum/http/headers.py",
    "src/fulcrum/http/framing.py",
    "src/fulcrum/balancing/round_robin.py",
    "src/fulcrum/routing/table.py",
    "src/fulcrum/routing/route.py",
    "src/fulcrum/routing/rewrite.py",
    "src/fulcrum/middleware/api.py",
    "src/fulcrum/middleware/chain.py",
    "src/fulcrum/middleware/builtins.py",
    "src/fulcrum/middleware/policy/accesslog.py",
    "src/fulcrum/middleware/policy/trace.py",
    "src/fulcrum/middleware/policy/ratelimit.py",
    "src/fulcrum/middleware/policy/cors.py",
]


#: Written in C: the pass over each request head's bytes (``rawhead._index_head_py`` is the same in Python).
C_SOURCES = ["src/fulcrum/proxy/_headscan.c"]


def ext_modules() -> list[Any]:
    if os.environ.get("FULCRUM_PURE"):
        return []
    scan = Extension("fulcrum.proxy._headscan", sources=C_SOURCES, extra_compile_args=["-O2"])
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("fulcrum: mypyc is not installed; compiling only the C modules", file=sys.stderr)
        return [scan]
    return [*mypycify(COMPILED, group_name="fulcrum.proxy._compiled", opt_level="3"), scan]


setup(ext_modules=ext_modules())
