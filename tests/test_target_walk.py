"""`TargetSpace.walk()`: the same targets one at a time and in numpy blocks (what the SYN
sender reads), for every kind of space: ranges, exclusions, several ports, IPv6, nmap pairs,
names, shards and the pairs a resumed scan skips; and the block walk of the cyclic permutation
is the scalar walk, also past 2**32.
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import numpy as np
import pytest

from vncaudit.models import Target
from vncaudit.targets import build_target_space
from vncaudit.targets.permutation import CyclicPermutation


def _resolver(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address("10.9.9.9"), ipaddress.ip_address("fd00::99")]


@pytest.fixture()
def mixed(tmp_path: Path) -> object:
    xml = tmp_path / "nmap.xml"
    xml.write_text("""<?xml version="1.0"?><nmaprun>
<host><status state="up"/><address addr="10.200.0.7" addrtype="ipv4"/>
<ports><port protocol="tcp" portid="5999"><state state="open"/></port></ports></host>
<host><status state="up"/><address addr="fd00::7" addrtype="ipv6"/>
<ports><port protocol="tcp" portid="5901"><state state="open"/></port></ports></host>
</nmaprun>""")
    return build_target_space(
        ["10.0.0.0/22", "10.1.0.1-10.1.0.9", "fd00::/120", "vnc.example.org"], [5900, 5901, 80],
        nmap_xml=[xml], excludes=["10.0.1.0/26", "10.0.2.5"], resolve=_resolver)


def _from_blocks(walk: object, size: int) -> list[Target]:
    out: list[Target] = []
    for block in walk.blocks(size):  # type: ignore[attr-defined]
        out += [walk.target(int(p)) for p in block.pairs]  # type: ignore[attr-defined]
        out += list(block.others)
    return out


@pytest.mark.parametrize("shard", [None, (0, 1), (2, 5), (4, 5)])
@pytest.mark.parametrize("size", [1, 64, 4096])
def test_blocks_hold_exactly_the_targets_of_the_walk(mixed: object, shard: tuple[int, int] | None,
                                                     size: int) -> None:
    space = mixed
    walk = space.walk(seed=7, shard=shard)  # type: ignore[attr-defined]
    one_by_one = list(walk)
    assert one_by_one == list(space.iter_targets(7, shard))  # type: ignore[attr-defined]
    blocks = _from_blocks(walk, size)
    assert sorted(map(repr, blocks)) == sorted(map(repr, one_by_one))
    v4 = [t for t in one_by_one if ":" not in t.host]
    assert [t for t in blocks if ":" not in t.host] == v4  # IPv4 in the walk's order
    if shard in (None, (0, 1)):  # the whole walk: names and nmap's pairs are in it
        assert Target("10.9.9.9", 80, "vnc.example.org") in blocks
        assert Target("10.200.0.7", 5999) in blocks


def test_blocks_leave_out_the_skipped_pairs(mixed: object) -> None:
    space = mixed
    every = list(space.walk())  # type: ignore[attr-defined]
    skip = {(t.host, t.port) for t in every[::3]}
    walk = space.walk(skip=skip)  # type: ignore[attr-defined]
    left = list(walk)
    assert len(left) == len(every) - len(skip)
    assert sorted(map(repr, _from_blocks(walk, 100))) == sorted(map(repr, left))


def test_shards_of_blocks_are_disjoint_and_complete(mixed: object) -> None:
    space = mixed
    whole = sorted(map(repr, _from_blocks(space.walk(), 512)))  # type: ignore[attr-defined]
    parts = [_from_blocks(space.walk(shard=(i, 4)), 512)  # type: ignore[attr-defined]
             for i in range(4)]
    assert sorted(repr(t) for part in parts for t in part) == whole


@pytest.mark.parametrize("n,seed,shard", [(1, 1, (0, 1)), (2, 2, (0, 1)), (65536, 3, (0, 1)),
                                          (65536, 3, (5, 16)), (1_000_003, 4, (2, 3)),
                                          ((1 << 32) + 5, 5, (0, 1)),
                                          ((1 << 32) * 65535, 6, (1, 7))])
def test_index_blocks_are_the_scalar_walk(n: int, seed: int, shard: tuple[int, int]) -> None:
    perm = CyclicPermutation(n, seed)
    scalar = list(itertools.islice(perm.indices(*shard), 30_000))
    blocks = itertools.islice(perm.index_blocks(*shard, size=997), 40)
    vector = np.concatenate(list(blocks))[:len(scalar)]
    assert vector.tolist() == scalar
    if n <= 1 << 20:
        assert np.concatenate(list(perm.index_blocks(*shard, size=4096))).tolist() == \
            list(perm.indices(*shard))
