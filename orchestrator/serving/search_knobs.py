"""The search-time knobs of an approximate gallery index: ``nprobe`` (IVF) and ``efSearch`` (HNSW).

An approximate index trades recall for speed at search time, without rebuilding it:

- ``nprobe``: how many of an IVF index's ``nlist`` lists a query visits (1 to ``nlist``; ``nlist``
  visits every list, which is flat search over the index's codes). FAISS's own default is 1,
  which at a million vectors misses a large share of the true neighbours: never used here.
- ``efSearch``: how many candidates HNSW's graph search keeps (at least 1; FAISS searches with at
  least ``k``). FAISS's own default is 16.
- ``Flat`` is exact and takes neither.

Rules:

- Names are FAISS's (``nprobe``, ``efSearch``): in ``gallery.json`` under ``"search"``; the options
  are ``--nprobe`` and ``--ef-search``, the keyword arguments ``nprobe`` and ``ef_search``.
- The default is chosen by gallery size (``default_search_parameters``; measured in
  ``bench/index_scale.py``, reasons in docs/benchmarks.md): ``nprobe`` = ``nlist / 64`` (at least
  ``DEFAULT_MIN_NPROBE``, at most ``nlist``), ``efSearch`` = ``DEFAULT_EF_SEARCH``. The IVF list count
  that goes with a gallery of N vectors is ``suggested_ivf_lists`` (about 4 sqrt(N), a power of two).
- ``gallery embed`` records the default it was given (or chose) in ``gallery.json``; a query or a
  served search may override it per call. A knob the index does not take, or a value out of range,
  is refused with the option's name and the allowed values.
- Knobs are applied through FAISS's ``ParameterSpace``, which reaches an IVF or HNSW index inside
  a pre-transform (PCA, OPQ) or a refinement wrapper.
"""

from __future__ import annotations

import math
from typing import Any

from search_space.errors import CmpnasError

NPROBE, EF_SEARCH = "nprobe", "efSearch"
KNOBS = (NPROBE, EF_SEARCH)
# The option that sets each knob, as errors name it (the keyword argument is ef_search / nprobe).
OPTION = {NPROBE: "--nprobe", EF_SEARCH: "--ef-search"}
# From bench/index_scale.py (docs/benchmarks.md, 100 k vectors of real-image embeddings): IVF1024 at
# nprobe 16 (1/64 of the lists) found 99.8% of flat's top 10 at flat's R@1, 30x faster; fewer lists
# lost recall@10 (0.89 at nprobe 4). A floor keeps small indexes from visiting one or two lists.
NPROBE_FRACTION = 64
DEFAULT_MIN_NPROBE = 16
DEFAULT_EF_SEARCH = 128


class SearchKnobError(CmpnasError, ValueError):
    """A search-time knob the index does not take, or a value out of its range."""


def index_knobs(index) -> dict[str, int]:
    """The knobs ``index`` takes and each one's largest value (``nlist`` for nprobe; 0: no bound)."""
    import faiss

    space = faiss.ParameterSpace()
    space.initialize(index)
    names = {space.parameter_ranges.at(i).name for i in range(space.parameter_ranges.size())}
    knobs = {}
    if NPROBE in names:
        knobs[NPROBE] = int(faiss.try_extract_index_ivf(index).nlist)
    if EF_SEARCH in names:
        knobs[EF_SEARCH] = 0
    return knobs


def suggested_ivf_lists(count: int) -> int:
    """The IVF list count for a gallery of ``count`` vectors: about 4 sqrt(N), rounded to a power of two
    (FAISS's guidance: 4-16 sqrt(N) lists; fewer lists keep nprobe's share of the work smaller at 1 M)."""
    return 2 ** max(0, round(math.log2(4 * math.sqrt(max(1, count)))))


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(DEFAULT_MIN_NPROBE, nlist // NPROBE_FRACTION))


def default_search_parameters(index) -> dict[str, int]:
    """The knobs' defaults for ``index`` (module rules); {} for an exact index."""
    defaults = {}
    knobs = index_knobs(index)
    if NPROBE in knobs:
        defaults[NPROBE] = default_nprobe(knobs[NPROBE])
    if EF_SEARCH in knobs:
        defaults[EF_SEARCH] = DEFAULT_EF_SEARCH
    return defaults


def checked_search_parameters(index, factory: str, given: dict[str, Any]) -> dict[str, int]:
    """``given`` (FAISS names; None values ignored), checked against what ``index`` (built from ``factory``) takes."""
    knobs = index_knobs(index)
    checked = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in KNOBS:
            raise SearchKnobError(f"unknown search knob {name!r}: the knobs are {list(KNOBS)}")
        if name not in knobs:
            raise SearchKnobError(f"{OPTION[name]} does not apply to index {factory!r}: {_what_it_takes(knobs)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (knobs[name] and value > knobs[name]):
            allowed = f"an integer from 1 to {knobs[name]} (its IVF lists)" if knobs[name] else "an integer >= 1"
            raise SearchKnobError(f"{OPTION[name]} {value!r} is out of range for index {factory!r}: give {allowed}; "
                                  "higher: better recall, slower search")
        checked[name] = value
    return checked


def _what_it_takes(knobs: dict[str, int]) -> str:
    if not knobs:
        return "it searches exactly and takes no search knob"
    return "it takes " + " and ".join(OPTION[name] for name in knobs)


def apply_search_parameters(index, parameters: dict[str, int]) -> None:
    """Set ``parameters`` (checked) on ``index`` for the searches that follow."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in parameters.items():
        space.set_index_parameter(index, name, float(value))
