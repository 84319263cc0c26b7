"""Communication graphs and their gossip (mixing) matrices.

A mixing matrix W for n workers is symmetric and doubly stochastic (W = Wᵀ, W1 = 1) with
W_ij > 0 only on the graph's edges and the diagonal, so one gossip round X ← W X keeps
the workers' average. How fast gossip contracts the disagreement is governed by the
spectral gap 1 − |λ₂(W)|, where |λ₂| is the second largest eigenvalue in magnitude
(Boyd, Diaconis, Xiao, "Fastest mixing Markov chain on a graph", 2004; Lian et al. 2017
use ρ = |λ₂|²-style quantities in the same role).

Graphs come from networkx; the weights are ours:

- Metropolis–Hastings: W_ij = 1 / (1 + max(deg_i, deg_j)) on edges, W_ii = 1 − Σ_j W_ij
  (Xiao, Boyd, Kim 2007), doubly stochastic on any undirected graph;
- uniform: W_ij = 1 / (1 + deg_max) on edges ("maximum-degree" weights), which on a
  regular graph is the plain average over a worker and its neighbours, and on the
  complete graph is 1/n everywhere (so gossip is an exact all-reduce mean).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np
import torch

from .errors import UserError
from .registry import Registry

GRAPHS = Registry("topology")  # name -> graph builder(n, ...): register one to add a topology


class _Names(Sequence):
    """The registered topology names, always current (a topology registered later is in it)."""

    def __getitem__(self, i):
        return GRAPHS.names()[i]

    def __len__(self) -> int:
        return len(GRAPHS.names())


TOPOLOGIES = _Names()
MIXINGS = ("metropolis", "uniform")


def _torus_shape(n: int, rows: int | None) -> tuple[int, int]:
    if rows is None:
        rows = int(math.isqrt(n))
        while n % rows:
            rows -= 1
    if rows < 1 or n % rows:
        raise UserError(f"topology torus: {rows} rows do not divide n={n}")
    cols = n // rows
    if rows < 3 or cols < 3:
        raise UserError(
            f"topology torus: n={n} gives a {rows}x{cols} torus; both sides must be at least 3 "
            "(use n with two factors >= 3, e.g. 9, 12, 16)"
        )
    return rows, cols


def build_graph(
    name: str,
    n: int,
    *,
    degree: int = 4,
    p: float = 0.3,
    rows: int | None = None,
    seed: int = 0,
) -> nx.Graph:
    """The undirected communication graph `name` (a registered builder) on nodes 0..n-1
    (worker ids). A graph that is not connected, or that does not fit n, is a UserError."""
    if n < 1:
        raise UserError(f"topology {name}: n must be >= 1, got {n}")
    builder = GRAPHS.entry(name).factory
    if n == 1:
        return nx.empty_graph(1)
    given = {"degree": degree, "p": p, "rows": rows, "seed": seed}
    accepted = inspect.signature(builder).parameters
    g = builder(n, **{k: v for k, v in given.items() if k in accepted})
    if not nx.is_connected(g):
        raise UserError(
            f"topology {name} with n={n} is not connected; gossip cannot reach consensus "
            "(raise the degree or p, or change the seed)"
        )
    return g


@GRAPHS.register("ring")
def ring(n: int) -> nx.Graph:
    """i ~ i ± 1 mod n, n ≥ 3."""
    if n < 3:
        raise UserError(f"topology ring needs n >= 3 workers, got n={n}")
    return nx.cycle_graph(n)


@GRAPHS.register("torus", shorthand="rows")
def torus(n: int, rows: int | None = None) -> nx.Graph:
    """2D torus R×C with R, C ≥ 3 and R·C = n; `rows` picks R."""
    r, c = _torus_shape(n, rows)
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(r, c, periodic=True), ordering="sorted")


@GRAPHS.register("complete")
def complete(n: int) -> nx.Graph:
    """every worker is every other's neighbour."""
    return nx.complete_graph(n)


@GRAPHS.register("star")
def star(n: int) -> nx.Graph:
    """node 0 is the hub."""
    return nx.star_graph(n - 1)


@GRAPHS.register("hypercube")
def hypercube(n: int) -> nx.Graph:
    """n a power of two."""
    k = n.bit_length() - 1
    if 1 << k != n:
        raise UserError(f"topology hypercube needs n a power of two, got n={n}")
    return nx.convert_node_labels_to_integers(nx.hypercube_graph(k), ordering="sorted")


@GRAPHS.register("exponential")
def exponential(n: int) -> nx.Graph:
    """i ~ i ± 2^k mod n, k = 0..⌊log₂(n−1)⌋: the undirected exponential graph of Assran et al. 2019."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    hop = 1
    while hop < n:
        for i in range(n):
            j = (i + hop) % n
            if j != i:
                g.add_edge(i, j)
        hop *= 2
    return g


@GRAPHS.register("random_regular", shorthand="degree")
def random_regular(n: int, degree: int = 4, seed: int = 0) -> nx.Graph:
    """every worker has `degree` neighbours, drawn with the seed."""
    if not 1 <= degree < n or (n * degree) % 2:
        raise UserError(
            f"topology random_regular: degree={degree} does not fit n={n} "
            "(need 1 <= degree < n and n*degree even)"
        )
    return nx.random_regular_graph(degree, n, seed=seed)


@GRAPHS.register("erdos_renyi", shorthand="p")
def erdos_renyi(n: int, p: float = 0.3, seed: int = 0) -> nx.Graph:
    """each edge with probability `p`, drawn with the seed."""
    if not 0.0 < p <= 1.0:
        raise UserError(f"topology erdos_renyi: p must be in (0, 1], got {p}")
    return nx.gnp_random_graph(n, p, seed=seed)


def mixing_matrix(graph: nx.Graph, kind: str = "metropolis") -> torch.Tensor:
    """Symmetric doubly stochastic W [n, n] (float64) supported on `graph` plus the diagonal."""
    if kind not in MIXINGS:
        raise UserError(f"unknown mixing '{kind}' (choose from {', '.join(MIXINGS)})")
    n = graph.number_of_nodes()
    deg = np.array([graph.degree(i) for i in range(n)], dtype=np.float64)
    w = np.zeros((n, n), dtype=np.float64)
    dmax = deg.max() if n else 0.0
    for i, j in graph.edges():
        if i == j:
            continue
        wij = 1.0 / (1.0 + max(deg[i], deg[j])) if kind == "metropolis" else 1.0 / (1.0 + dmax)
        w[i, j] = w[j, i] = wij
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return torch.from_numpy(w)


def spectral_gap(w: torch.Tensor) -> float:
    """1 − |λ₂(W)| for symmetric W: 1 for exact averaging, → 0 as gossip slows down."""
    n = w.shape[0]
    if n == 1:
        return 1.0
    ev = torch.linalg.eigvalsh(w.double()).abs().sort(descending=True).values
    return float(1.0 - ev[1])


@dataclass(frozen=True)
class Topology:
    """A graph with its mixing matrix: what gossip algorithms and the communicator share."""

    name: str
    graph: nx.Graph
    mixing: torch.Tensor  # [n, n] float64, symmetric, doubly stochastic
    mixing_kind: str

    @property
    def n(self) -> int:
        return self.mixing.shape[0]

    @cached_property
    def spectral_gap(self) -> float:
        return spectral_gap(self.mixing)

    @cached_property
    def lambda_min(self) -> float:
        return float(torch.linalg.eigvalsh(self.mixing).min())

    def degrees(self) -> list[int]:
        return [self.graph.degree(i) for i in range(self.n)]

    @cached_property
    def degree_tensor(self) -> torch.Tensor:
        """Neighbours per worker [n] (int64), computed once: gossip traffic uses it every step."""
        return torch.tensor(self.degrees(), dtype=torch.int64)

    def lazy(self) -> Topology:
        """The same graph with the lazy mixing matrix (W + I)/2: eigenvalues (λ + 1)/2 ≥ 0."""
        w = (self.mixing + torch.eye(self.n, dtype=self.mixing.dtype)) / 2
        return Topology(name=self.name, graph=self.graph, mixing=w, mixing_kind=f"lazy {self.mixing_kind}")

    def summary(self) -> dict:
        return {
            "topology": self.name,
            "mixing": self.mixing_kind,
            "n": self.n,
            "edges": self.graph.number_of_edges(),
            "max_degree": max(self.degrees()) if self.n > 1 else 0,
            "spectral_gap": self.spectral_gap,
            "lambda_min": self.lambda_min,
        }


def make_topology(name: str, n: int, mixing: str = "metropolis", **graph_kwargs) -> Topology:
    """Build graph and mixing matrix in one call, e.g. `make_topology("ring", 16)`."""
    g = build_graph(name, n, **graph_kwargs)
    return Topology(name=name, graph=g, mixing=mixing_matrix(g, mixing), mixing_kind=mixing)


@dataclass(frozen=True)
class TopologySpec:
    """A topology before the number of workers is known: what an algorithm's `topology`
    option holds until the engine binds it to n workers and the run's seed."""

    name: str = "ring"
    mixing: str = "metropolis"
    degree: int = 4  # random_regular
    p: float = 0.3  # erdos_renyi
    rows: int | None = None  # torus

    def __post_init__(self):
        if self.name not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.name!r} (choose from {', '.join(TOPOLOGIES)})")
        if self.mixing not in MIXINGS:
            raise ValueError(f"unknown mixing {self.mixing!r} (choose from {', '.join(MIXINGS)})")

    @classmethod
    def parse(cls, spec) -> TopologySpec | Topology:
        """From "ring", "random_regular:4", {name = "torus", rows = 4}, a spec or a Topology."""
        if isinstance(spec, Topology | TopologySpec):
            return spec
        if isinstance(spec, str):
            name, _, value = spec.partition(":")
            kw = {}
            if value:
                key = GRAPHS.entry(name.strip()).shorthand
                if key is None:
                    raise ValueError(f"topology {name!r} takes no ':value' shorthand")
                kw[key] = float(value) if key == "p" else int(value)
            return cls(name.strip(), **kw)
        if isinstance(spec, dict):
            unknown = set(spec) - {"name", "mixing", "degree", "p", "rows"}
            if unknown:
                raise ValueError(f"topology: unknown option {sorted(unknown)[0]!r} (options: name, mixing, degree, p, rows)")
            return cls(**spec)
        raise ValueError(f"topology: expected a name, a table or a Topology, got {type(spec).__name__}")

    def build(self, n: int, seed: int = 0) -> Topology:
        return _build_cached(self, n, seed)


_CACHE: dict[tuple, Topology] = {}


def _build_cached(spec: TopologySpec, n: int, seed: int) -> Topology:
    """Topologies are pure functions of (spec, n, seed); build each once per process."""
    key = (spec, n, seed)
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = make_topology(
            spec.name, n, spec.mixing, degree=spec.degree, p=spec.p, rows=spec.rows, seed=seed
        )
    return _CACHE[key]
