"""Fulcrum's own request ids: 32 lowercase hex digits, a per-process prefix and a counter, never repeated."""

from __future__ import annotations

from fulcrum.http.headers import RequestIds


def test_ids_count_up_in_hex_across_the_formatted_blocks() -> None:
    ids = RequestIds()
    made = [ids.next() for _ in range(70_000)]  # past 256 (one block) and 65,536 (the next digit) ids
    prefix = made[0][:16]
    assert all(len(rid) == 32 and rid[:16] == prefix for rid in made)
    assert [int(rid[16:], 16) for rid in made] == list(range(1, 70_001))
    assert all(rid == rid.lower() and bytes.fromhex(rid.decode()) for rid in made)


def test_two_generators_have_different_prefixes() -> None:
    assert RequestIds().next()[:16] != RequestIds().next()[:16]
