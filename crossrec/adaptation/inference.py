"""Scoring API for the streaming consumer and the batch publisher.

``load_current(settings)`` returns a ``Recommender`` over the registry's current model. It scores a
user from their raw mixed-domain history ``[(domain, item_id), ...]`` against every target-domain
item with one matmul, masks what the user already has, and returns the top-K with R_ui = sigma(.)
scores. When the version's artifact carries a routing table, the loaders return the routed model
(``crossrec.adaptation.routing.RoutedRecommender``, a ``Recommender`` whose lists say which
route they took). ``add_item`` makes a brand-new item (text embedding, no interactions) scorable at once:
its f_i comes from the adaptor alone, which is the point of a text-based item side.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from crossrec.adaptation.artifacts import read_artifact
from crossrec.adaptation.data import BOS_DOMAIN_ID
from crossrec.adaptation.model import CrossDomainModel
from crossrec.evaluation import MISSED, rank_batch
from crossrec.registry import RegistryError, registry_for

History = Sequence[tuple[str, str]]
log = logging.getLogger(__name__)


class Recommender:
    """A loaded model version plus its item index; safe to share between threads."""

    def __init__(self, version: str, path: Path) -> None:
        art = read_artifact(path)
        self._init_parts(version, art.model, art.config, list(zip(art.items["domain"], art.items["item_id"])), art.vectors)

    def _init_parts(
        self, version: str, model: CrossDomainModel, config: dict, keys: list[tuple[str, str]], vectors: np.ndarray
    ) -> None:
        """The state of a loaded model: ``keys[i]`` is row i of ``vectors`` (f_i), row 0 the padding."""
        self.version = version
        self.model = model
        self.config = config
        self.view: str = config["view"]
        self.source_domain: str = config["source_domain"]
        self.target_domain: str = config["target_domain"]
        self.max_len: int = model.cfg.max_len
        self._lock = threading.RLock()
        self._buffers = threading.local()  # per thread: the logits buffer of _top_k
        self._keys: list[tuple[str, str]] = list(keys)
        self._index = {k: i for i, k in enumerate(self._keys) if i > 0}
        self._vecs = torch.from_numpy(np.array(vectors))  # a copy: add_item writes into it
        self._target_rows = np.asarray([i for i, (d, _) in enumerate(self._keys) if d == self.target_domain], dtype=np.int64)
        # Token-domain id of every row (0 source, 1 target, -1 neither); row 0, the padding, is 0.
        codes = {self.source_domain: 0, self.target_domain: 1}
        self._dom_codes = torch.as_tensor([0] + [codes.get(d, -1) for d, _ in self._keys[1:]], dtype=torch.int64)
        self.unknown_items = 0  # history items the model has no vector for (skipped, counted)
        self._refresh_targets()

    # ------------------------------------------------------------------ catalogue
    def _refresh_targets(self) -> None:
        self._target_mat = self._vecs[torch.as_tensor(self._target_rows)]
        self._target_ids = [self._keys[i][1] for i in self._target_rows]
        self._target_pos = {iid: j for j, iid in enumerate(self._target_ids)}

    @property
    def target_items(self) -> list[str]:
        return list(self._target_ids)

    def _domain_code(self, domain: str) -> int:
        if domain == self.target_domain:
            return 1
        if domain == self.source_domain:
            return 0
        raise ValueError(f"domain {domain!r} is neither {self.source_domain!r} nor {self.target_domain!r}")

    @torch.no_grad()
    def add_item(self, domain: str, item_id: str, embedding: Sequence[float] | np.ndarray) -> None:
        """Register (or re-embed) an item from its text embedding alone."""
        self._domain_code(domain)
        x = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, -1)
        if x.shape[1] != self.model.cfg.in_dim:
            raise ValueError(f"embedding has {x.shape[1]} dims; the model's encoder gives {self.model.cfg.in_dim}")
        v = self.model.raw_item_vecs(x)
        with self._lock:
            key = (domain, item_id)
            row = self._index.get(key)
            if row is None:
                row = len(self._keys)
                self._keys.append(key)
                self._index[key] = row
                self._vecs = torch.cat([self._vecs, v])
                self._dom_codes = torch.cat([self._dom_codes, torch.as_tensor([self._domain_code(domain)])])
                if domain == self.target_domain:
                    self._target_rows = np.append(self._target_rows, row)
            else:
                self._vecs[row] = v[0]
            self._refresh_targets()

    def known_keys(self, domain: str, n: int) -> list[tuple[str, str]]:
        """Up to ``n`` known ``(domain, item_id)`` keys of ``domain``, in index order."""
        return list(itertools.islice((key for key in self._keys[1:] if key[0] == domain), n))

    def has_item(self, domain: str, item_id: str) -> bool:
        return (domain, item_id) in self._index

    def vectors_for(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """Adapted item vectors f_i of known ``(domain, item_id)`` keys (explanations use them)."""
        with self._lock:
            rows = [self._index[key] for key in keys]
            return self._vecs[torch.as_tensor(rows, dtype=torch.int64)].numpy()

    def rows_for(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """The row of each key in the item index, -1 for an unknown item (one look-up per key,
        no exception: a batch's explanations look up every history item of every user)."""
        with self._lock:
            get = self._index.get
            return np.array([get(key, -1) for key in keys], dtype=np.int64)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """f_i of index rows from ``rows_for`` (unknown ones left out by the caller)."""
        with self._lock:
            return self._vecs[torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))].numpy()

    # ------------------------------------------------------------------ scoring
    def look_up(self, histories: Sequence[History]) -> tuple[np.ndarray, np.ndarray]:
        """(index row of every history event, -1 if unknown; whether it is a target-domain event),
        over the histories' events in order. One dictionary pass per batch, which the routed
        model shares between its segments, its masks and the model's input."""
        keys = [key for h in histories for key in h]
        target = self.target_domain
        return self.rows_for(keys), np.fromiter((d == target for d, _ in keys), bool, len(keys))

    def _input_rows(self, histories: Sequence[History], looked_up: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(the model's input rows of all histories, concatenated; how many per history): each
        history's known items of the model's view (unknown ones skipped and counted in
        ``unknown_items``), its last ``max_len - 1`` (the first place is BOS)."""
        rows, is_target = self.look_up(histories) if looked_up is None else looked_up
        sizes = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        user = np.repeat(np.arange(len(histories)), sizes)
        in_view = is_target if self.view == "target" else np.ones(rows.size, bool)
        self.unknown_items += int((in_view & (rows < 0)).sum())
        keep = np.flatnonzero(in_view & (rows >= 0))
        counts = np.bincount(user[keep], minlength=len(histories))
        # the place of each kept row counted from its history's end: the last max_len - 1 stay
        from_end = counts[user[keep]] - 1 - (np.arange(keep.size) - np.repeat(np.cumsum(counts) - counts, counts))
        keep = keep[from_end < max(self.max_len - 1, 0)]
        return rows[keep], np.bincount(user[keep], minlength=len(histories))

    @torch.no_grad()
    def _user_states(self, histories: Sequence[History], looked_up: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, dim) user states f_u after each history, and the target matrix of the same moment.

        Both come from one snapshot under the lock, so an item added meanwhile cannot shift the
        columns between them. ``looked_up``: the batch's ``look_up`` when the caller has it (rows
        only ever get appended, so rows read before the snapshot are rows of it).
        """
        with self._lock:
            vecs, target_mat, dom_codes = self._vecs, self._target_mat, self._dom_codes
            flat_rows, row_counts = self._input_rows(histories, looked_up)
        n = len(histories)
        sizes = torch.from_numpy(row_counts)
        L = int(sizes.max()) + 1 if n else 1
        # [BOS, row ids..., padding 0] per user, filled with one scatter rather than a copy per user.
        flat = torch.from_numpy(flat_rows)
        user = torch.repeat_interleave(torch.arange(n), sizes)
        starts = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        tok = torch.zeros(n, L, dtype=torch.int64)
        tok[user, torch.arange(flat.numel()) - starts + 1] = flat
        dom = dom_codes[tok]  # padding (row 0) gets 0, as the model was trained with
        if bool((dom < 0).any()):
            bad = self._keys[int(tok[dom < 0][0])][0]
            self._domain_code(bad)  # raises: an item of a domain the model does not know
        dom[:, 0] = BOS_DOMAIN_ID
        lengths = sizes + 1
        h = self.model.user_states(vecs[tok], dom, lengths)
        return h[torch.arange(n), lengths - 1], target_mat

    @torch.no_grad()
    def _logits(self, histories: Sequence[History], scratch: torch.Tensor | None = None, looked_up: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The model's logits of the histories, in fresh memory or over ``scratch`` (``_scratch``)."""
        states, target_mat = self._user_states(histories, looked_up)
        out = None if scratch is None else self._scratch(scratch, len(histories), target_mat.shape[0])
        return self.model.logits(states, target_mat, out).numpy()

    def _scratch(self, flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """A (rows, cols) matrix over ``flat``'s memory, grown when too small.

        Why: a batch's logits (500 users x 20k items, 40 MB) in fresh memory cost the page faults
        of 40 MB per batch, a third of the matmul's time; the consumer scores every batch into
        the same memory instead. Per thread (``_buffers``), so threads never share one.
        """
        if flat.numel() < rows * cols:
            flat = torch.empty(rows * cols)
            self._buffers.flat = flat
        return flat[: rows * cols].view(rows, cols)

    def logits(self, histories: Sequence[History]) -> np.ndarray:
        """(users, target items) raw model logits, unmasked (the routed model normalises and mixes them)."""
        return self._logits(histories)

    def _masks(self, histories: Sequence[History], excludes: Sequence[Iterable[str]] | None) -> list[np.ndarray]:
        out = []
        for i, h in enumerate(histories):
            ids = {iid for d, iid in h if d == self.target_domain}
            if excludes is not None:
                ids |= set(excludes[i])
            out.append(np.asarray(sorted(self._target_pos[x] for x in ids if x in self._target_pos), dtype=np.int64))
        return out

    def _top_many(self, logits: np.ndarray, masks: Sequence[np.ndarray], k: int) -> list[list[tuple[str, float]]]:
        """Each row's k best unmasked items, best first, ties to the lower catalogue position.

        One masked ``torch.topk`` over the whole batch rather than one per user: the consumer
        scores a poll's users together, and the per-row loop (with a float64 copy of every row)
        cost more than the model's matmul. ``logits`` is overwritten (masked in place).
        """
        n, m = logits.shape
        kk = min(k, m)
        if n == 0 or kk <= 0:
            return [[] for _ in range(n)]
        sizes = [len(mask) for mask in masks]
        if sum(sizes):
            logits[np.repeat(np.arange(n), sizes), np.concatenate(masks)] = -np.inf
        # One extra column shows whether the k-th score ties with the next: topk picks among tied
        # items arbitrarily, so such (rare) rows are re-ranked exactly with a stable sort.
        top = torch.topk(torch.from_numpy(logits), min(kk + 1, m), dim=1)
        idx, val = top.indices.numpy()[:, :kk].copy(), top.values.numpy()
        if kk < m:
            for i in np.flatnonzero(val[:, kk - 1] == val[:, kk]):
                idx[i] = np.argsort(-logits[i], kind="stable")[:kk]
        val = np.take_along_axis(logits, idx, axis=1)
        order = np.lexsort((idx, -val), axis=-1)  # equal scores: the lower catalogue position first
        idx = np.take_along_axis(idx, order, axis=1)
        prob = 1.0 / (1.0 + np.exp(-np.take_along_axis(val, order, axis=1).astype(np.float64)))
        out = []
        for i in range(n):
            keep = min(kk, m - sizes[i])  # masked positions are unique, so this many are finite
            out.append([(self._target_ids[j], float(p)) for j, p in zip(idx[i, :keep], prob[i, :keep])])
        return out

    def _top_k(self, histories: Sequence[History], masks: Sequence[np.ndarray], k: int) -> list[list[tuple[str, float]]]:
        """Top-k of each history; the logits go to this thread's reused buffer (``_scratch``).

        The whole batch is one matmul, as before: BLAS may round a row differently when it is
        computed in a block of another size, and the lists must not depend on such blocking.
        """
        return self._top_many(self._buffered_logits(histories), masks, k)

    def _buffered_logits(self, histories: Sequence[History], looked_up: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The logits of ``histories`` in this thread's reused buffer (``_scratch``): valid until
        this thread scores its next batch."""
        return self._logits(histories, self._thread_flat(), looked_up)

    def _thread_flat(self) -> torch.Tensor:
        """This thread's reused scratch memory for ``_scratch`` (empty before its first batch)."""
        flat = getattr(self._buffers, "flat", None)
        return flat if flat is not None else torch.empty(0)

    def score_history(self, history: History, k: int, exclude: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """Top-k target items for one user history; already-seen target items are never returned."""
        return self._top_k([history], self._masks([history], [exclude or ()]), k)[0]

    def top_k_for_users(self, histories: Mapping[str, History], k: int, batch_size: int = 512) -> dict[str, list[tuple[str, float]]]:
        """Batch scoring for the publisher and the consumer: {user_id: [(item_id, score), ...]}."""
        users = list(histories)
        out: dict[str, list[tuple[str, float]]] = {}
        for s in range(0, len(users), batch_size):
            chunk = users[s : s + batch_size]
            hs = [histories[u] for u in chunk]
            out.update(zip(chunk, self._top_k(hs, self._masks(hs, None), k)))
        return out

    def ranks(self, histories: Sequence[History], targets: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """Full-rank position of each held-out target item (what the gate re-scores the current model with)."""
        out = []
        for s in range(0, len(histories), batch_size):
            hs = histories[s : s + batch_size]
            tg = [self._target_pos.get(t, -1) for t in targets[s : s + batch_size]]
            logits = self._logits(hs)
            r = rank_batch(logits, [max(t, 0) for t in tg], self._masks(hs, None))
            r[np.asarray(tg) < 0] = MISSED  # unknown target: a miss
            out.append(r)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def load_model(settings, version: str, path: Path) -> Recommender:
    """The serving model of a registered version: its routed model when the artifact has a
    routing table (``routing/``, fitted by ``crossrec adapt``) and ``serving.routing`` is on,
    else the plain model. Both answer the same calls; the routed one's lists carry their route."""
    from crossrec.adaptation.routing import RoutedRecommender, has_routing

    if settings.serving.routing and has_routing(path):
        routed = RoutedRecommender(version, path)
        log.info("model %s serves through its routing table: %s", version,
                 ", ".join(f"{seg} -> {c.route}" for seg, c in routed.table.routes.items()))
        return routed
    return Recommender(version, path)


def load_version(settings, version: str) -> Recommender:
    reg = registry_for(settings.work_dir)
    return load_model(settings, version, reg.path(version))


def load_current(settings) -> Recommender:
    """The registry's current model (routed where it can be); a clear error when nothing has been
    promoted yet."""
    reg = registry_for(settings.work_dir)
    version = reg.current()
    if version is None:
        raise RegistryError(f"no current model in {reg.root}; run `crossrec adapt` first")
    return load_model(settings, version, reg.path(version))
