"""Per-row temperature and top-p: the final sampling distribution of a decoding step.

Pure tensor code: imports torch only. Every path that applies a per-row top-p runs the code here
(``generate()``'s step :func:`autodeco.core.dynamic.dynamic_step`, the compacting decode loop, the
vLLM plugin, the comparison methods): :func:`warp_logits`, or :func:`mask_outside_nucleus` on logits
already divided by T and their softmax.

**The nucleus rule.** Hugging Face's ``TopPLogitsWarper`` (sort ascending, remove the tokens whose
cumulative probability is at most ``1 - top_p``, always keep the most likely token), with one top-p per
row and the two things its code leaves open pinned down:

- *order*: tokens rank by their scaled logit ``logits / T`` (float32), most likely first; equal scaled
  logits rank by vocabulary index, the **lowest index first** (a stable descending sort), so a tie that
  straddles the cut keeps its lowest indices;
- *sums*: the token of rank ``r >= 1`` is removed when the **exact** sum of the probabilities (the float32
  ``softmax(logits / T)``, computed in vocabulary order) of it and of every lower-ranked token, rounded to
  the nearest float32 (ties to even), is at most ``1 - top_p`` (float32). The most likely token stays.

With probabilities ``[0.4, 0.3, 0.2, 0.1]`` (vocabulary order = rank order) and ``top_p = 0.6``, the
tails from the bottom are ``0.1, 0.3, 0.6, 1.0``; ``1 - 0.6 = 0.4`` removes the tokens whose tail is
0.1 or 0.3, and the nucleus is ``{0.4, 0.3}`` (mass 0.7 >= 0.6). Exact sums make the rule independent
of how a sum is computed (an ascending float cumsum rounds differently on CPU and GPU, and from a
sorted softmax); otherwise it is the same cut as a sort and an ascending cumsum.

**Without sorting the vocabulary** (:func:`nucleus_boundary`), in two stages. First a *window*: each
row's :data:`NUCLEUS_WINDOW` highest logits (found through block maxima) and the row's total mass (float32
sums of blocks of 64, added in float64); when the window's tails settle the cut with room to spare, the row is
done. That is most rows of a trained model's peaked distributions (a nucleus of a few tokens). The other rows
(flat distributions, a nucleus past the window, a tie across the window's edge) go to a float64 histogram of the
probabilities' masses over :data:`BUCKETS` buckets of their bit patterns, which finds each row's *boundary
bucket* (the one holding its least likely kept token); only that bucket's members are sorted. A row whose
float64 sums land too close to the cut to round safely is decided again exactly, in integers
(:func:`nucleus_removal_mask` on that row sorted). The plain reference lives in ``tests/reference.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

MIN_SAMPLING_TEMPERATURE = 1e-8
"""Temperatures are clamped to at least this before dividing the logits."""

BUCKET_SHIFT = 18
"""A probability's bucket is its float32 bit pattern shifted right by this (rounded up): 32 buckets per power
of two, each spanning about 2.2 % of a probability (the bit patterns of non-negative floats order like them)."""

_BUCKET_ROUNDING = (1 << BUCKET_SHIFT) - 1  # shifting rounded up leaves exactly the zero probabilities in bucket 0
_FLOAT32_ONE_BITS = 0x3F800000
BUCKETS = ((_FLOAT32_ONE_BITS + _BUCKET_ROUNDING) >> BUCKET_SHIFT) + 1
"""Buckets per row: enough for every probability in [0, 1] (4,065)."""

CHUNK_ELEMENTS = 1 << 18
"""Vocabulary-sized work runs on whole rows, about this many elements at a time (:func:`row_chunks`): a chunk's
float32 tensors take 1 MiB and stay in cache, the bucketing's int64 and float64 copies 2 MiB each. On a 2-core
CPU, the same passes over a whole batch of 64 rows (12 MiB a tensor) took up to twice as long, and whole-batch
int64 and float64 copies several times as long (page faults)."""

NUCLEUS_WINDOW = 32
"""Candidates of the window stage (:func:`_window_boundary`): each row's this many highest logits. On the embedded
model with its shipped heads 90 % of the nuclei hold at most 34 tokens (median 3)."""

NUCLEUS_WIDE_WINDOW = 256
"""The second window stage, for the rows the first leaves undecided: a ``topk`` of this many (99 % of those nuclei
hold fewer than 340 tokens, and a ``topk`` of 256 costs about half the bucketing)."""

WINDOW_BLOCK = 64
"""The narrow window reads the vocabulary in blocks of this many tokens: their maxima choose the candidates, their
float32 sums (each within ``(WINDOW_BLOCK - 1) * 2^-24`` of exact, relatively) add up to the row's mass
(:func:`_blocked_candidates`)."""

FLOAT64_TERM_ERROR = 2.0**-52
"""Relative rounding error allowed per term of a float64 sum of non-negative floats: twice the unit roundoff
(any float64 sum of ``n`` such terms is within ``n * 2^-53`` of the exact sum, relatively)."""

_FLOAT32_UNIT = 2.0**-149
"""Every float32 is an integer multiple of this (the smallest subnormal)."""


class NucleusBoundary(NamedTuple):
    """Each row's least likely kept token: the nucleus is every token ranked at or above it."""

    logit: torch.Tensor
    """``(B,)`` its scaled logit; ``-inf`` for a row that keeps every token (``top_p > 1``, or NaN probabilities)."""
    index: torch.Tensor
    """``(B,)`` its vocabulary index."""
    removed_ties: torch.Tensor
    """``(n, 2)`` row and vocabulary index of each token with a row's lowest kept logit but a higher index than its
    lowest kept token: ranked below it, so removed, though no lower logit is kept (a tie straddling the cut)."""


def row_chunks(rows: int, vocab: int) -> list[slice]:
    """Consecutive slices of whole rows, each of at most :data:`CHUNK_ELEMENTS` elements (or one row).

    Example:
        >>> row_chunks(5, 2**17)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    size = max(1, CHUNK_ELEMENTS // vocab)
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def combine_with_user_values(
    head_temperature: torch.Tensor,
    head_top_p: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the user's ``temperature`` and ``top_p`` as multipliers, as the official vLLM integration does.

    ``T = T_head * temperature`` and ``P = min(1, P_head * top_p)``.

    Example:
        >>> combine_with_user_values(torch.tensor([0.8]), torch.tensor([0.9]), 0.5, 2.0)
        (tensor([0.4000]), tensor([1.]))
    """
    return head_temperature * temperature, (head_top_p * top_p).clamp(max=1.0)


def scale_logits(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` float32 ``logits / T``, a fresh tensor; T is clamped to at least ``MIN_SAMPLING_TEMPERATURE``.

    Example:
        >>> scale_logits(torch.tensor([[2.0, 1.0]]), torch.tensor([0.0]))
        tensor([[2.0000e+08, 1.0000e+08]])
    """
    return logits.float() / temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1)


def warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Scale logits by a per-row temperature and mask everything outside the per-row nucleus.

    The same code as every decoding step of ``generate()``: :func:`scale_logits`, a softmax and
    :func:`mask_outside_nucleus`.

    Args:
        logits: ``(B, V)`` unscaled logits (not modified), any float dtype.
        temperature: ``(B,)`` temperatures (> 0; clamped to at least ``MIN_SAMPLING_TEMPERATURE``).
        top_p: ``(B,)`` nucleus masses in (0, 1].

    Returns:
        ``(B, V)`` float32 logits whose softmax is the sampling distribution; ``-inf`` outside the nucleus.

    Example:
        >>> warp_logits(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0.5]), torch.tensor([0.5]))
        tensor([[4., -inf, -inf]])
    """
    scaled_logits = scale_logits(logits, temperature)  # (B, V), fresh: ours to overwrite
    return mask_outside_nucleus(scaled_logits, scaled_logits.softmax(dim=-1), top_p)


def adjusted_log_probs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the final sampling distribution of ``softmax(logits / T)`` within the top-p nucleus.

    Args:
        logits: ``(B, V)`` unscaled logits.
        temperature: ``(B,)`` temperatures.
        top_p: ``(B,)`` nucleus masses.

    Returns:
        ``(B, V)`` float32 log-probabilities, ``-inf`` outside the nucleus.

    Example:
        >>> adjusted_log_probs(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]), torch.tensor([1.0])).exp()
        tensor([[0.5000, 0.5000]])
    """
    return torch.log_softmax(warp_logits(logits, temperature, top_p), dim=-1)


def mask_outside_nucleus(scaled_logits: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set the scaled logits outside each row's top-p nucleus to ``-inf``, in place.

    Args:
        scaled_logits: ``(B, V)`` float32 ``logits / T`` (overwritten and returned).
        probs: ``(B, V)`` float32 ``softmax(scaled_logits)`` (not modified).
        top_p: ``(B,)`` nucleus masses.

    Returns:
        ``scaled_logits``, with ``-inf`` below each row's :class:`NucleusBoundary`.

    Example (probabilities 0.16, 0.42, 0.42; tokens 1 and 2 tie, so token 1 ranks first: the tails from the
    bottom are 0.16 and 0.58, both at most 1 - 0.4, and only token 1 stays):
        >>> scaled = torch.tensor([[0.0, 1.0, 1.0]])
        >>> mask_outside_nucleus(scaled, scaled.softmax(-1), torch.tensor([0.4]))
        tensor([[-inf, 1., -inf]])
    """
    boundary = nucleus_boundary(scaled_logits, probs, top_p)
    _remove_below(scaled_logits, boundary.logit)
    scaled_logits[boundary.removed_ties.unbind(1)] = -math.inf
    return scaled_logits


def _remove_below(scaled_logits: torch.Tensor, lowest_logit: torch.Tensor) -> None:
    """``-inf`` for every logit below its row's lowest kept logit (a row whose lowest is ``-inf`` is left alone)."""
    if scaled_logits.device.type != "cpu":
        scaled_logits.masked_fill_(scaled_logits < lowest_logit.unsqueeze(-1), -math.inf)
        return
    # On CPU one vectorised threshold per row is several times faster than a (B, V) boolean mask.
    below = torch.nextafter(lowest_logit, lowest_logit.new_tensor(-math.inf))  # (B,): keep the logits above this
    for row, threshold in enumerate(below.tolist()):
        if threshold > -math.inf:  # -inf: the row keeps every token (NaN rows stay NaN)
            F.threshold_(scaled_logits[row], threshold, -math.inf)


def tail_bound(top_p: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 midpoint between ``1 - top_p`` (float32) and the next float32 above it.

    An exact tail mass below the midpoint rounds to at most ``1 - top_p`` (removed), one above it to more
    (kept); one equal to it rounds to whichever neighbour has an even significand.

    Example:
        >>> tail_bound(torch.tensor([0.5])).item() == 0.5 + 2.0**-25
        True
    """
    threshold = 1 - top_p.float()  # (B,), as transformers computes it
    above = torch.nextafter(threshold, threshold.new_tensor(math.inf))
    return (threshold.double() + above.double()) / 2  # exact: 25 significant bits


def nucleus_boundary(scaled_logits: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor) -> NucleusBoundary:
    """Each row's least likely kept token under the nucleus rule, without sorting the vocabulary.

    0. The window stage (:func:`_window_boundary`) settles the rows whose nucleus lies within their
       :data:`NUCLEUS_WINDOW` highest logits, with the tails' rounding error bounded as in step 3; the other
       rows take steps 1-3.
    1. Each probability falls in a bucket of its bit pattern (:data:`BUCKET_SHIFT`); a float64 scatter-add
       gives the buckets' masses, and their cumulative sum the *boundary bucket*: the first whose cumulative
       mass exceeds :func:`tail_bound`. Every token above it is kept, every token below it removed.
    2. Only the boundary bucket's members are sorted (by rank; their probabilities lie within 2.2 % of each
       other: a few hundred tokens on a flat distribution of 49,152, a handful on a peaked one), and their
       tails are the mass below the bucket plus their own cumulative masses.
    3. Float64 sums of ``n`` non-negative terms are within ``n * 2^-53`` of the exact sums (relatively);
       a row whose deciding tails lie within ``(2 V + BUCKETS) * FLOAT64_TERM_ERROR`` of the bound is decided
       again exactly (:func:`nucleus_removal_mask` on the row sorted), so the result is the rule's, bit for bit.

    Args:
        scaled_logits: ``(B, V)`` float32 ``logits / T`` (they give the order).
        probs: ``(B, V)`` float32 ``softmax(scaled_logits)``, in [0, 1]; a row of NaN (the softmax of a NaN
            or ``+inf`` logit) keeps every token.
        top_p: ``(B,)`` nucleus masses; a row with ``top_p > 1`` (or NaN) keeps every token.

    Returns:
        a :class:`NucleusBoundary`.

    Raises:
        ValueError: logits or probabilities that are not float32.

    Example (probabilities 0.4, 0.3, 0.2, 0.1: the tails 0.3 and 0.1 are at most 1 - 0.6):
        >>> probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
        >>> nucleus_boundary(probs.log(), probs, torch.tensor([0.6])).index
        tensor([1])
    """
    if probs.dtype != torch.float32 or scaled_logits.dtype != torch.float32:
        raise ValueError(
            f"nucleus_boundary needs float32 logits and probabilities (it reads their bit patterns), but got "
            f"{scaled_logits.dtype} and {probs.dtype}; pass logits.float() / T and its softmax"
        )
    rows, vocab = probs.shape
    bound = tail_bound(top_p).to(probs.device)  # (B,) float64
    keeps_all = probs[:, 0].isnan() | ~(bound >= 0)  # (B,): NaN rows (a softmax is NaN everywhere or nowhere)
    if rows and not bool(keeps_all.any()):
        return _boundary(scaled_logits, probs, top_p, bound)
    logit = probs.new_full((rows,), -math.inf)  # (B,)
    index = torch.full((rows,), vocab - 1, device=probs.device)  # (B,)
    active = (~keeps_all).nonzero().flatten()  # (b,)
    if not active.numel():
        return NucleusBoundary(logit, index, index.new_empty((0, 2)))
    part = _boundary(scaled_logits[active], probs[active], top_p[active], bound[active])
    logit[active], index[active] = part.logit, part.index
    removed_ties = torch.stack([active[part.removed_ties[:, 0]], part.removed_ties[:, 1]], dim=-1)  # (n, 2)
    return NucleusBoundary(logit, index, removed_ties)


def _boundary(scaled_logits, probs, top_p, bound) -> NucleusBoundary:
    """:func:`nucleus_boundary` for rows with ``bound >= 0`` and probabilities in [0, 1]: the window stages, then the
    bucketing for the rows they leave undecided."""
    rows, vocab = probs.shape
    narrow, wide = min(NUCLEUS_WINDOW, vocab), min(NUCLEUS_WIDE_WINDOW, vocab)
    if vocab % WINDOW_BLOCK == 0 and vocab >= 4 * narrow * WINDOW_BLOCK:
        candidates, total, total_error = _blocked_candidates(scaled_logits, probs, narrow)
    else:  # a small or ragged vocabulary: topk and a float64 sum
        candidates, total = None, probs.sum(dim=-1, dtype=torch.float64)
        total_error = vocab * FLOAT64_TERM_ERROR * total
    found = _Boundaries(rows, probs.device)
    first = _window_boundary(scaled_logits, probs, bound, total, total_error, narrow, candidates=candidates, wider=wide)
    undecided = found.add(torch.arange(rows, device=probs.device), first)  # (u,)
    if wide > narrow and undecided.numel():
        reachable = undecided[~first.spills[undecided]]  # the rows whose cut a wider window may hold
        if reachable.numel():
            second = _window_boundary(scaled_logits[reachable], probs[reachable], bound[reachable], total[reachable],
                                      total_error[reachable], wide)
            settled = reachable[second.decided]
            found.add(reachable, second)
            undecided = undecided[~torch.isin(undecided, settled)]
    if undecided.numel():
        rest = _bucket_boundary(scaled_logits[undecided], probs[undecided], top_p[undecided], bound[undecided])
        found.add(undecided, _WindowResult(rest, torch.ones_like(undecided, dtype=torch.bool), None))
    return found.result()


class _Boundaries:
    """Each row's boundary, gathered from the stages that settle it."""

    def __init__(self, rows: int, device):
        self.logit = torch.empty(rows, device=device)
        self.index = torch.empty(rows, dtype=torch.long, device=device)
        self.removed_ties = [torch.empty((0, 2), dtype=torch.long, device=device)]

    def add(self, rows: torch.Tensor, stage: _WindowResult) -> torch.Tensor:
        """Keep the boundaries of ``rows`` (``(u,)`` row numbers) that ``stage`` decided; return the others."""
        done = stage.decided
        self.logit[rows[done]], self.index[rows[done]] = stage.boundary.logit[done], stage.boundary.index[done]
        ties = stage.boundary.removed_ties
        ties = ties[done[ties[:, 0]]]
        self.removed_ties.append(torch.stack([rows[ties[:, 0]], ties[:, 1]], dim=-1))
        return rows[~done]

    def result(self) -> NucleusBoundary:
        return NucleusBoundary(self.logit, self.index, torch.cat(self.removed_ties))


class _WindowResult(NamedTuple):
    boundary: NucleusBoundary
    """Each row's boundary (meaningful where ``decided``)."""
    decided: torch.Tensor
    """``(B,)`` the rows whose cut the stage settled."""
    spills: torch.Tensor | None
    """``(B,)`` rows whose nucleus certainly holds more tokens than the ``wider`` window (None: not asked)."""


def _blocked_candidates(scaled_logits, probs, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The narrow window's candidates and each row's total probability, from blocks of :data:`WINDOW_BLOCK` tokens.

    The ``width`` blocks with the highest maxima hold ``width`` logits at least as high as any outside them: their
    members ``(B, width * WINDOW_BLOCK)`` are the candidates. The total is the float64 sum of those members plus the
    float32 sums of the other blocks (each within ``(WINDOW_BLOCK - 1) * 2^-24`` of exact, relatively, whatever the
    order of its additions), so the rounding bound ``(B,)`` scales with the mass *outside* the chosen blocks: next
    to nothing on a peaked row, where a near-1 top-p puts the cut among tiny tails.
    """
    rows, vocab = probs.shape
    blocks = vocab // WINDOW_BLOCK
    chosen = scaled_logits.view(rows, blocks, WINDOW_BLOCK).amax(dim=-1).topk(width, dim=-1).indices  # (B, W)
    candidates = (chosen.unsqueeze(-1) * WINDOW_BLOCK + torch.arange(WINDOW_BLOCK, device=probs.device)).flatten(1)
    block_sums = probs.view(rows, blocks, WINDOW_BLOCK).sum(dim=-1)  # (B, blocks) float32
    outside = (block_sums.sum(dim=-1, dtype=torch.float64)
               - block_sums.gather(1, chosen).sum(dim=-1, dtype=torch.float64)).clamp_(min=0)  # (B,)
    inside = probs.gather(1, candidates).sum(dim=-1, dtype=torch.float64)  # (B,)
    terms = blocks + width + candidates.shape[1] + 2  # float64 additions and subtractions, each within 2^-53
    total_error = (WINDOW_BLOCK - 1) * 2.0**-24 * (1 + 2.0**-10) * outside + terms * FLOAT64_TERM_ERROR * (outside + 2 * inside)
    return candidates, outside + inside, total_error


def _window_boundary(
    scaled_logits, probs, bound, total, total_error, width: int, *, candidates=None, wider: int | None = None
) -> _WindowResult:
    """The cut of the rows whose nucleus lies inside their ``width`` highest logits (a window).

    The candidates come in rank order (logit descending, equal logits by index); rank ``r``'s tail is the row's
    mass (with its rounding bound ``total_error``) minus the candidates ranked above it. Rank ``k`` is the lowest kept when its tail
    is above the bound and rank ``k + 1``'s below it, both by more than the sums' rounding (or ``k = 0``, which
    always stays); and the window holds every token tied with rank ``k`` when its logit is above the window's
    lowest one. ``candidates``: ``(B, C)`` columns known to hold each row's ``width`` highest logits (from
    :func:`_blocked_candidates`; None: ``topk`` over the vocabulary). ``wider``: also say
    which rows a window of that many tokens could not settle either: the ``wider - width`` tokens after the
    window weigh at most the window's last token each, so rank ``wider``'s tail is at least what they leave.
    """
    rows, vocab = probs.shape
    if candidates is not None:
        logits, picks = scaled_logits.gather(1, candidates).topk(width, dim=-1)  # (B, W) descending
        columns = candidates.gather(1, picks)
    else:
        logits, columns = scaled_logits.topk(width, dim=-1)
    columns, order = columns.sort(dim=-1)  # ties among the candidates: lowest index first ...
    logits, order = logits.gather(1, order).sort(dim=-1, descending=True, stable=True)  # ... within rank order
    columns = columns.gather(1, order)
    masses = probs.gather(1, columns).double()  # (B, W) in rank order
    tails = total.unsqueeze(-1) - (masses.cumsum(dim=-1) - masses)  # (B, W): rank r's tail
    margin = (total_error + (width + 2) * FLOAT64_TERM_ERROR * total).unsqueeze(-1)  # (B, 1)
    kept = (tails > bound.unsqueeze(-1)).sum(dim=-1)  # (B,): tails fall with the rank, so a prefix
    lowest = (kept - 1).clamp(min=0)  # (B,) rank k
    below = lowest + 1  # (B,) rank k + 1, if the window has it
    inside = below < width
    below_slot = below.clamp(max=width - 1).unsqueeze(-1)
    lowest_slot = lowest.unsqueeze(-1)
    kept_certain = (lowest == 0) | (tails.gather(1, lowest_slot) - margin > bound.unsqueeze(-1)).squeeze(1)
    removed_certain = (tails.gather(1, below_slot) + margin < bound.unsqueeze(-1)).squeeze(1)
    lowest_logit, lowest_index = logits.gather(1, lowest_slot).squeeze(1), columns.gather(1, lowest_slot).squeeze(1)
    whole_ties = (lowest_logit > logits[:, -1]) | (width == vocab)  # no token outside shares rank k's logit
    decided = inside & kept_certain & removed_certain & whole_ties
    tied = (torch.arange(width, device=probs.device) > lowest_slot) & (logits == lowest_logit.unsqueeze(-1))
    tied_rows, tied_slots = tied.nonzero().unbind(1)  # candidates after rank k with its logit: removed ties
    removed_ties = torch.stack([tied_rows, columns[tied_rows, tied_slots]], dim=-1)  # (n, 2)
    spills = None
    if wider is not None:  # rank `wider`'s tail >= rank (width - 1)'s tail - (wider - width + 1) * its mass
        least_tail = tails[:, -1] - (wider - width + 1) * masses[:, -1] * (1 + FLOAT64_TERM_ERROR)
        spills = ~decided & (least_tail - margin.squeeze(1) > bound)
    return _WindowResult(NucleusBoundary(lowest_logit, lowest_index, removed_ties), decided, spills)


def _bucket_boundary(scaled_logits, probs, top_p, bound) -> NucleusBoundary:
    """The bucketing stage of :func:`nucleus_boundary` (see there), for any rows."""
    rows, vocab = probs.shape
    chunks = row_chunks(rows, vocab)
    workspace = _BucketingWorkspace(chunks[0].stop, vocab, probs.device)
    parts = [_boundary_bucket(probs[chunk], bound[chunk], workspace) for chunk in chunks]
    member_rows = torch.cat([part[0] + chunk.start for part, chunk in zip(parts, chunks)])
    member_columns, below, at_top = (torch.cat([part[i] for part in parts]) for i in (1, 2, 3))
    logits, columns, masses, counts = _sorted_members(scaled_logits, probs, member_rows, member_columns)
    tails = masses.cumsum(dim=-1).add_(below.unsqueeze(-1))  # (B, W): each member's tail mass
    real = torch.arange(tails.shape[1], device=tails.device) < counts.unsqueeze(-1)  # (B, W)
    removed = (tails <= bound.unsqueeze(-1)).logical_and_(real).sum(dim=-1)  # (B,): a prefix of the members
    position = torch.minimum(removed, counts - 1).unsqueeze(-1)  # (B, 1): lowest kept member, the top one at least
    lower = (position - 1).clamp(min=0)  # (B, 1): the member ranked just below it
    kept_tail, lower_tail = tails.gather(1, position).squeeze(1), tails.gather(1, lower).squeeze(1)  # (B,)
    removed_tail = torch.where(position.squeeze(1) > 0, lower_tail, below)  # (B,): highest removed token's tail
    forced = (removed == counts) & at_top  # (B,): only the most likely token stays (rank 0 always does)
    relative_error = (2 * vocab + BUCKETS) * FLOAT64_TERM_ERROR  # terms: histogram, bucket and member sums
    certain = (removed_tail * (1 + relative_error) < bound) & (forced | (kept_tail * (1 - relative_error) > bound))
    lowest_logit, lowest_index = logits.gather(1, position).squeeze(1), columns.gather(1, position).squeeze(1)
    tied = (torch.arange(tails.shape[1], device=tails.device) < position) & (logits == lowest_logit.unsqueeze(-1))
    tied_rows, tied_slots = tied.nonzero().unbind(1)  # removed members with the lowest kept logit
    removed_ties = torch.stack([tied_rows, columns[tied_rows, tied_slots]], dim=-1)  # (n, 2)
    for row in (~certain).nonzero().flatten().tolist():  # float64 too close to the cut: decide exactly
        lowest_logit[row], lowest_index[row], tied_columns = _exact_boundary(scaled_logits[row], probs[row], top_p[row])
        row_ties = torch.stack([torch.full_like(tied_columns, row), tied_columns], dim=-1)  # (t, 2)
        removed_ties = torch.cat([removed_ties[removed_ties[:, 0] != row], row_ties])
    return NucleusBoundary(lowest_logit, lowest_index, removed_ties)


class _BucketingWorkspace:
    """The bucketing's ``(R, V)`` buffers, allocated once per call and reused by every chunk of rows."""

    def __init__(self, rows: int, vocab: int, device: torch.device):
        self.buckets = torch.empty((rows, vocab), dtype=torch.int32, device=device)
        self.indices = torch.empty((rows, vocab), dtype=torch.long, device=device)
        self.masses = torch.empty((rows, vocab), dtype=torch.float64, device=device)
        self.members = torch.empty((rows, vocab), dtype=torch.bool, device=device)


def _boundary_bucket(probs: torch.Tensor, bound: torch.Tensor, workspace: _BucketingWorkspace):
    """Bucket a chunk of rows; return the boundary bucket's members ``(rows (n,), columns (n,))``, the mass
    below that bucket ``(R,)`` float64, and whether it is the most likely token's bucket ``(R,)``."""
    rows = probs.shape[0]
    bucket = torch.add(probs.view(torch.int32), _BUCKET_ROUNDING, out=workspace.buckets[:rows])  # (R, V) int32
    bucket.bitwise_right_shift_(BUCKET_SHIFT)
    indices, masses = workspace.indices[:rows].copy_(bucket), workspace.masses[:rows].copy_(probs)  # (R, V) each
    cumulative = probs.new_zeros((rows, BUCKETS), dtype=torch.float64).scatter_add_(1, indices, masses)
    cumulative = cumulative.cumsum_(dim=-1)  # (R, BUCKETS): mass of the buckets up to each; bucket 0 holds none
    boundary = torch.searchsorted(cumulative, bound.unsqueeze(-1), right=True)  # (R, 1): first one above the bound
    top = torch.searchsorted(cumulative, cumulative[:, -1:].contiguous())  # (R, 1): first one holding all the mass
    boundary = torch.minimum(boundary, top)  # >= 1 since bound >= 0
    below = cumulative.gather(1, boundary - 1).squeeze(1)  # (R,)
    members = workspace.members[:rows].copy_(bucket.eq_(boundary.int()))  # (R, V); eq_ on int32 beats ==
    member_rows, member_columns = members.nonzero().unbind(1)  # row-major: columns ascending in each row
    return member_rows, member_columns, below, (boundary == top).squeeze(1)


def _sorted_members(scaled_logits, probs, member_rows, member_columns):
    """The boundary buckets' members in ascending rank (least likely first), padded to ``(B, W)``.

    Returns their scaled logits (padding ``+inf``), vocabulary indices, float64 probabilities (padding 0)
    and the member count of each row ``(B,)``.
    """
    rows = probs.shape[0]
    counts = torch.bincount(member_rows, minlength=rows)  # (B,)
    ends = counts.cumsum(0)  # (B,) where each row's members end
    slots = ends[member_rows] - 1 - torch.arange(member_rows.numel(), device=probs.device)  # (n,) columns descending
    width = int(counts.max())
    columns = member_columns.new_zeros((rows, width)).index_put_((member_rows, slots), member_columns)  # (B, W)
    real = torch.arange(width, device=probs.device) < counts.unsqueeze(-1)  # (B, W)
    logits = scaled_logits.gather(1, columns).masked_fill_(~real, math.inf)  # (B, W), padding last once sorted
    logits, order = logits.sort(dim=-1, stable=True)  # (B, W) ascending rank: equal logits, higher index first
    columns = columns.gather(1, order)
    masses = probs.gather(1, columns).double().mul_(real)  # (B, W)
    return logits, columns, masses, counts


def _exact_boundary(scaled_logits: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor):
    """One row's ``(V,)`` lowest kept logit, its index and the indices of its removed ties ``(t,)``, from the rule
    itself: a stable sort and exact sums."""
    order = scaled_logits.sort(descending=True, stable=True).indices  # (V,) rank order
    removed = nucleus_removal_mask(probs[order].flip(0).unsqueeze(0), top_p.reshape(1))  # (1, V) ascending
    kept = order.numel() - int(removed.sum())  # ranks 0 .. kept - 1 stay
    lowest = order[kept - 1]
    below = order[kept:]  # (V - kept,) the removed ranks
    return scaled_logits[lowest], lowest, below[scaled_logits[below] == scaled_logits[lowest]]


def nucleus_removal_mask(ascending_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which tokens top-p removes, for probabilities sorted in *ascending* rank: the nucleus rule, exactly.

    A token is removed when the exact sum of the probabilities of it and every less likely token,
    rounded to float32, is at most ``1 - top_p``. With probabilities ``[0.1, 0.2, 0.3, 0.4]`` and
    ``top_p = 0.6`` the tails are ``[0.1, 0.3, 0.6, 1.0]``; ``1 - 0.6 = 0.4`` removes the first two, so
    the nucleus is ``{0.3, 0.4}`` (mass 0.7 >= 0.6). The most likely (last) token always stays. Sums are
    Python integers in units of 2^-149 (one Python step per token: the plain, slow statement of the rule).

    Args:
        ascending_probs: ``(B, V)`` float32 probabilities sorted by ascending rank along the last dimension.
        top_p: ``(B,)`` nucleus mass per row.

    Returns:
        ``(B, V)`` boolean mask in the same sorted order, True where a token is removed.

    Example:
        >>> nucleus_removal_mask(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([0.6]))
        tensor([[ True,  True, False, False]])
    """
    removed = torch.zeros(ascending_probs.shape, dtype=torch.bool)
    units = (ascending_probs.float().double() / _FLOAT32_UNIT).tolist()  # exact: float32s are multiples of the unit
    for row, (row_units, threshold) in enumerate(zip(units, (1 - top_p.float()).tolist())):
        removed[row, : _removed_count(row_units, threshold)] = True
    return removed.to(ascending_probs.device)


def _removed_count(ascending_units: list[float], threshold: float) -> int:
    """How many of the least likely tokens the rule removes (each ``units * 2^-149``; ``threshold = 1 - top_p``)."""
    if threshold < 0 or math.isnan(sum(ascending_units)):
        return 0
    limit = int(threshold / _FLOAT32_UNIT)
    tail = 0
    for count, unit in enumerate(ascending_units[:-1]):
        tail += int(unit)
        if _round_to_float32(tail) > limit:
            return count
    return len(ascending_units) - 1


def _round_to_float32(units: int) -> int:
    """``units * 2^-149`` rounded to the nearest float32 (ties to the even significand), in the same units.

    Example (2^24 + 1 units needs 25 bits: halfway between 2^24 and 2^24 + 2, the even significand wins):
        >>> _round_to_float32(2**24 + 1) == 2**24, _round_to_float32(2**24 + 3) == 2**24 + 4
        (True, True)
    """
    shift = max(units.bit_length() - 24, 0)  # float32 significands hold 24 bits (subnormals: units < 2^23)
    if shift == 0:
        return units
    quotient, remainder = divmod(units, 1 << shift)
    half = 1 << (shift - 1)
    quotient += remainder > half or (remainder == half and quotient % 2 == 1)
    return quotient << shift
