"""The SMs an NCCL collective holds while it runs: one per channel (issue 15, item 3).

NCCL launches a collective's kernel with one CTA per channel (src/enqueue.cc: ``grid = {nChannels, 1, 1}``), and
each CTA sits on an SM until the collective ends; a compute kernel running beside it gets the other SMs. How many
channels, following NCCL's source (figures and file names in ``data/nccl.toml``, table ``sm_use``):

- The communicator's ring/tree channels (``node_channels``). The ring search on an NVSwitch node
  (src/graph/search.cc, ncclTopoCompute) tries the architecture's intra-node speeds fastest first, starting at
  the first one the GPU's NVLink total (links x NCCL's per-link rate, topo.h) can carry; at speed s a GPU's
  links carry floor(total / s) channels (at most ``ringGraph->maxChannels`` = 32). It keeps the solution of the
  largest channels x speed (the first on a tie), stops once that reaches the total, and otherwise goes on to the
  next speed while next / best > 0.49. ncclTopoDupChannels then doubles the channels (up to 32) unless the speed
  is below 25 GB/s, or the GPU is newer than Ampere with a speed below 50 and more than 4 channels;
  ncclTopoPostset (connect.cc) doubles them again, up to MAXCHANNELS = 64. H100/H200 SXM (18 links x 20.6 =
  370.8 GB/s): 6 channels at 60 GB/s -> 12 -> 24. A100 (12 x 20 = 240): 6 at 40 -> 12 -> 24. H800 (8 links,
  164.8): 4 at 40 (160 beats 2 x 60, 3 x 50, 5 x 30, 6 x 24, ties 8 x 20) -> 8 -> 16. B200 (18 x 40.1 = 721.8):
  8 at 90 -> 16 -> 32. This is our reading of the search on an ideal NVSwitch node, not NCCL's run: the search's
  timeouts and PCIe/NIC paths are left out. Across nodes: Assumption, the node's count (data file).
- A small collective runs on fewer (enqueue.cc topoGetAlgoInfo): ``while nBytes < nc x nt x threshold and
  nc >= 2: nc -= 1`` with nt the protocol's threads (Simple 512, LL 512, LL128 640) and threshold its bytes per
  thread (Simple 64, LL128 8, LL 8 x ranks on a ring).
- NVLS runs on its own channels: 16 on Hopper, 24 on Blackwell in one NVLink domain (32 across nodes).

``collective_sms`` is the count for one (algorithm/protocol) NCCL runs; ``simulator.nccl_sms`` charges it to the
compute that runs beside the collective.
"""

from __future__ import annotations

from gpuhours.hwmodels.nccl import load_tables

PROTOCOLS = ("LL", "LL128", "Simple")


def _sm_use() -> dict:
    return load_tables()["sm_use"]


def node_channels(gpu: str, arch: str) -> int:
    """comm->nChannels of an NCCL communicator on one NVSwitch node of ``gpu`` (architecture row ``arch``): the
    ring search, ncclTopoDupChannels and ncclTopoPostset (module docstring)."""
    t = _sm_use()
    if arch not in t["arch"]:
        raise ValueError(f"arch must be one of {tuple(t['arch'])}, got {arch!r}")
    if gpu not in t["nvlink_links"]:
        raise ValueError(f"gpu must be one of {tuple(t['nvlink_links'])}, got {gpu!r}")
    a = t["arch"][arch]
    total = t["nvlink_links"][gpu] * a["nvlink_gb_s"]
    graph_max = t["ring_graph_max_channels"]
    speeds = [s for s in a["intra_speeds_gb_s"] if s <= total]
    best_n, best_bw = 0, 0.0
    for i, s in enumerate(speeds):
        if best_n and not s / best_bw > t["search_continue_ratio"]:
            break
        n = min(int(total // s), graph_max)
        if n * s > best_n * best_bw:
            best_n, best_bw = n, s
        if best_n * best_bw >= total:
            break
    if best_n == 0:
        raise ValueError(f"gpu {gpu!r} has no NVLink bandwidth NCCL's ring search can use")
    if best_bw >= t["dup_min_bw"] and not (a["cc"] > 80 and best_bw < t["dup_skip_bw"]
                                            and best_n > t["dup_skip_channels"]):
        best_n = min(2 * best_n, graph_max)
    return min(2 * best_n, t["max_channels"])


def collective_sms(gpu: str, arch: str, option: str, nbytes: float, ranks: int, nodes: int = 1) -> int:
    """SMs (channels) NCCL's kernel holds for a collective of ``nbytes`` (the larger of its send and receive
    buffers) over ``ranks`` ranks on ``nodes`` nodes, run as ``option`` ("ring/Simple", "tree/LL128",
    "nvls/Simple", as ``hwmodels.nccl.Option.name``)."""
    algo, _, proto = option.partition("/")
    t = _sm_use()
    if algo == "nvls":
        table = t["nvls_channels_multinode"] if nodes > 1 else t["nvls_channels"]
        if arch not in table:
            raise ValueError(f"arch must be one of {tuple(table)} for NVLS, got {arch!r}")
        nc = table[arch]
        return min(nc, node_channels(gpu, arch)) if nodes > 1 else nc
    if algo not in ("ring", "tree"):
        raise ValueError(f"option's algorithm must be one of ('ring', 'tree', 'nvls'), got {option!r}")
    if proto not in PROTOCOLS:
        raise ValueError(f"option's protocol must be one of {PROTOCOLS}, got {option!r}")
    if not nbytes >= 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    nc = node_channels(gpu, arch)
    nt = t["max_threads"][proto]
    threshold = t["thread_threshold"][proto] * (max(1, ranks) if algo == "ring" and proto == "LL" else 1)
    while nbytes < nc * nt * threshold and nc >= 2:
        nc -= 1
    return nc
