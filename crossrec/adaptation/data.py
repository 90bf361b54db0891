"""Load the clean-data and embedding contracts into compact arrays the trainer can batch.

Why arrays and not DataFrames: training touches every sequence every epoch; per-user numpy
arrays of global item indices make batching a cheap gather. The frozen text embeddings are loaded
once into one float32 matrix (row 0 = padding) so the adaptor runs over them without re-reading.

Global item layout: index 0 = padding, then all source-domain items, then all target-domain items,
so "all target items" is one contiguous slice (full-rank evaluation is a single matmul).

Where the inputs come from: when the Feast feature tables exist (``crossrec features stats``
wrote ``{work_dir}/features/item_stats_daily.parquet``, as the nightly DAG does before training),
the item embeddings and the per-event item statistics are read through Feast's offline API
(``crossrec.features.offline``: point-in-time joins); otherwise, e.g. on a bare data set without
the feature step, the embeddings are read from their parquet directly. ``AdaptData.feature_source``
says which path ran (and results.json can record it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
SOURCE, TARGET = 0, 1
BOS_DOMAIN_ID = 2  # domain id of the BOS token in the encoder input


class ContractError(ValueError):
    """Input does not follow the clean/embedding contract (clear message instead of a crash)."""


def _read_parquet_dir(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a (possibly hive-partitioned, Spark-written) parquet directory or file."""
    if not path.exists():
        raise ContractError(f"missing input: {path}")
    fmt = pads.dataset(str(path), format="parquet", partitioning="hive", exclude_invalid_files=True)
    missing = [c for c in columns if c not in fmt.schema.names]
    if missing:
        raise ContractError(f"{path}: missing columns {missing} (have {fmt.schema.names})")
    df = fmt.to_table(columns=columns).to_pandas()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(str)
    return df


@dataclass
class Catalog:
    """Every embeddable item with its frozen text embedding and domain."""

    keys: list[tuple[str, str]]  # (domain, item_id) per global index; index 0 = ("", "<pad>")
    domain: np.ndarray  # int8 per global index (SOURCE/TARGET; pad = -1)
    embeddings: np.ndarray  # float32 (n, dim), row 0 zeros
    source_offset: int
    target_offset: int
    index: dict[tuple[str, str], int] = field(repr=False, default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.keys)

    @property
    def n_source(self) -> int:
        return self.target_offset - self.source_offset

    @property
    def n_target(self) -> int:
        return self.n_items - self.target_offset

    def offset(self, dom: int) -> int:
        return self.target_offset if dom == TARGET else self.source_offset

    def count(self, dom: int) -> int:
        return self.n_target if dom == TARGET else self.n_source

    def target_ids(self) -> list[str]:
        return [k[1] for k in self.keys[self.target_offset :]]


@dataclass
class UserSeq:
    """One user's full mixed-domain sequence in time order (global indices)."""

    items: np.ndarray  # int64
    dom: np.ndarray  # int8
    split: np.ndarray  # int8 (SPLIT_CODES)

    def view(self, keep: str) -> "UserSeq":
        """'mixed' keeps everything; 'target'/'source' keep one domain's events."""
        if keep == "mixed":
            return self
        want = TARGET if keep == "target" else SOURCE
        m = self.dom == want
        return UserSeq(self.items[m], self.dom[m], self.split[m])

    def heldout(self, code: int) -> int | None:
        """Position of the event with split ``code`` (the valid or test target event)."""
        pos = np.flatnonzero(self.split == code)
        return int(pos[0]) if pos.size else None


@dataclass
class AdaptData:
    catalog: Catalog
    users: dict[str, UserSeq]
    split_users: dict[str, list[str]]
    source_domain: str
    target_domain: str
    encoder: str
    fingerprint: str
    dropped: dict[str, int] = field(default_factory=dict)
    feature_source: str = "parquet"  # "feast" when the inputs came through Feast's offline API
    # Per training event (user_id, item_id, domain, position): the item's statistics as of the
    # event (point in time, from Feast); None on the parquet path.
    event_stats: pd.DataFrame | None = None


def _feature_store(work_dir: Path, encoder: str):  # type: ignore[no-untyped-def]
    """Feast's store for this work dir when its training tables exist, else None.

    A work dir without ``features/`` (a bare data set) never imports Feast: the parquet path then
    runs where Feast is not installed at all (e.g. a GPU machine for benchmarks/bench_seeds.py).
    """
    if not (Path(work_dir) / "features").is_dir():
        return None
    from crossrec.features.store import apply, definitions_module

    defs = definitions_module()
    paths = defs.feature_paths(Path(work_dir), encoder)
    if not Path(paths[defs.ITEM_STATS_DAILY]).exists() or not Path(paths[defs.ITEM_EMBEDDINGS]).exists():
        return None
    from crossrec.settings import get_settings

    settings = get_settings().model_copy(update={"work_dir": Path(work_dir), "encoder": encoder})
    return apply(settings, encoder)  # idempotent registration


def _embeddings(work_dir: Path, encoder: str, store) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    path = Path(work_dir) / "embeddings" / encoder
    if store is None:
        return _read_parquet_dir(path, ["domain", "item_id", "embedding"])
    from crossrec.features.offline import item_embeddings_as_of

    ids = _read_parquet_dir(path, ["item_id"])["item_id"].astype(str).unique().tolist()  # the entity rows
    return item_embeddings_as_of(store, ids)


def load_catalog(work_dir: Path, encoder: str, source: str, target: str, *, store=None) -> tuple[Catalog, str]:  # type: ignore[no-untyped-def]
    """Embeddings of both domains -> Catalog (items with no embedding cannot be represented).

    ``store``: a Feast store to read the embeddings through (else the parquet is read directly).
    """
    emb = _embeddings(work_dir, encoder, store)
    emb = emb[emb["domain"].isin([source, target])]
    emb = emb.drop_duplicates(["domain", "item_id"], keep="last")
    if emb.empty:
        raise ContractError(f"no embeddings for domains {source!r}/{target!r} under {work_dir}/embeddings/{encoder}")
    emb = emb.assign(_d=(emb["domain"] == target).astype(np.int8)).sort_values(["_d", "item_id"], kind="stable")
    mat = np.stack(emb["embedding"].map(lambda v: np.asarray(v, dtype=np.float32)).to_numpy())
    dim = mat.shape[1]
    keys = [("", "<pad>")] + list(zip(emb["domain"].tolist(), emb["item_id"].tolist()))
    dom = np.concatenate([[-1], emb["_d"].to_numpy()]).astype(np.int8)
    embeddings = np.vstack([np.zeros((1, dim), np.float32), mat])
    n_src = int((emb["_d"] == 0).sum())
    cat = Catalog(keys=keys, domain=dom, embeddings=embeddings, source_offset=1, target_offset=1 + n_src)
    cat.index = {k: i for i, k in enumerate(keys) if i > 0}
    digest = hashlib.sha256(np.ascontiguousarray(mat[:: max(1, len(mat) // 512)]).tobytes())
    digest.update(str(mat.shape).encode())
    return cat, digest.hexdigest()[:16]


def load_split(path: Path | None, users: list[str], seed: int = 0) -> dict[str, list[str]]:
    """users_split.json if given; otherwise a seeded 80/10/10 split (so any data set runs)."""
    if path is not None and Path(path).is_file():
        raw = json.loads(Path(path).read_text())
        known = set(users)
        return {k: [u for u in raw.get(k, []) if u in known] for k in ("train", "valid", "test")}
    rng = np.random.default_rng(seed)
    perm = [users[i] for i in rng.permutation(len(users))]
    n = len(perm)
    a, b = int(0.8 * n), int(0.9 * n)
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def load_adapt_data(
    work_dir: Path,
    encoder: str = "minilm",
    source: str = "art",
    target: str = "office",
    split_path: Path | None = None,
) -> AdaptData:
    """Read ``{work_dir}/clean/events`` + ``{work_dir}/embeddings/{encoder}`` into AdaptData."""
    work_dir = Path(work_dir)
    store = _feature_store(work_dir, encoder)
    catalog, emb_digest = load_catalog(work_dir, encoder, source, target, store=store)
    columns = ["user_id", "item_id", "domain", "position", "split"] + (["ts_ms"] if store is not None else [])
    ev = _read_parquet_dir(work_dir / "clean" / "events", columns)
    dropped: dict[str, int] = {}
    other = ~ev["domain"].isin([source, target])
    if other.any():
        dropped["other_domain"] = int(other.sum())
        ev = ev[~other]
    bad_split = ~ev["split"].isin(list(SPLIT_CODES))
    if bad_split.any():
        dropped["bad_split"] = int(bad_split.sum())
        ev = ev[~bad_split]
    gidx = np.fromiter(
        (catalog.index.get(k, 0) for k in zip(ev["domain"].tolist(), ev["item_id"].tolist())), dtype=np.int64, count=len(ev)
    )
    no_emb = gidx == 0
    if no_emb.any():
        dropped["item_without_embedding"] = int(no_emb.sum())
        log.warning("%d events reference items without an embedding; dropped", int(no_emb.sum()))
    ev = ev.assign(g=gidx)[~no_emb]
    ev = ev.sort_values(["user_id", "position"], kind="stable")
    dom = catalog.domain[ev["g"].to_numpy()]
    spl = ev["split"].map(SPLIT_CODES).to_numpy(np.int8)
    g = ev["g"].to_numpy()
    uids = ev["user_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1], True])
    users = {
        str(uids[s]): UserSeq(g[s:e].copy(), dom[s:e].copy(), spl[s:e].copy()) for s, e in zip(bounds[:-1], bounds[1:])
    }
    split_users = load_split(split_path, sorted(users))
    h = hashlib.sha256(emb_digest.encode())
    h.update(pd.util.hash_pandas_object(ev[["user_id", "g", "split"]], index=False).to_numpy().tobytes())
    event_stats = None
    if store is not None:
        from crossrec.features.offline import events_with_item_stats

        event_stats = events_with_item_stats(store, ev[["user_id", "item_id", "domain", "position", "ts_ms"]])
    return AdaptData(
        catalog=catalog,
        users=users,
        split_users=split_users,
        source_domain=source,
        target_domain=target,
        encoder=encoder,
        fingerprint=h.hexdigest()[:16],
        dropped=dropped,
        feature_source="feast" if store is not None else "parquet",
        event_stats=event_stats,
    )


# ----------------------------------------------------------------------------- batching


@dataclass
class TrainExample:
    """Inputs [BOS, x_s..x_{e-2}] (BOS implied) and labels x_s..x_{e-1} (global idx, 0 = no label)."""

    tokens: np.ndarray
    labels: np.ndarray


def make_train_examples(seqs: list[UserSeq], predict: set[int], max_len: int) -> list[TrainExample]:
    """Next-item examples: position t sees [BOS, x_0..x_{t-1}] and predicts x_t if its domain is in ``predict``.

    Sequences longer than ``max_len`` are cut into windows from the end, so every label is used
    (the first label of an inner window is predicted from BOS alone: a small, harmless noise).
    """
    out = []
    want = np.asarray(sorted(predict), dtype=np.int8)
    for s in seqs:
        if s.items.size == 0:
            continue
        lab = np.where(np.isin(s.dom, want), s.items, 0)
        end = s.items.size
        while end > 0:
            start = max(0, end - max_len)
            if lab[start:end].any():
                out.append(TrainExample(tokens=s.items[start : end - 1], labels=lab[start:end]))
            end = start
    return out


def pad_batch(examples: list[TrainExample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (B, L) token and label arrays plus lengths; position 0 is always BOS (token 0)."""
    L = max(len(e.labels) for e in examples)
    tok = np.zeros((len(examples), L), np.int64)
    lab = np.zeros((len(examples), L), np.int64)
    lengths = np.zeros(len(examples), np.int64)
    for i, e in enumerate(examples):
        n = len(e.labels)
        lab[i, :n] = e.labels
        tok[i, 1:n] = e.tokens
        lengths[i] = n
    return tok, lab, lengths


@dataclass
class EvalSet:
    """Held-out target items with the history the model may see (already in the model's view)."""

    user_ids: list[str]
    histories: list[np.ndarray]  # global idx, truncated to max_len for the encoder
    masks: list[np.ndarray]  # local target indices of target-domain history items (full history)
    targets: np.ndarray  # local target index
    cold: np.ndarray  # bool: no target-domain history before the held-out item
    n_target_hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # target events before it (segments)


def selection_positions(data: AdaptData, n_users: int, seed: int = 0) -> dict[str, int]:
    """The selection set: for up to ``n_users`` training users with >= 2 target events, the position
    of their last target event, held out of their training sequence (see ``truncate_at``).

    Why a second validation set: early stopping already looks at the validation users, so choosing a
    strategy, a route or a promotion on those same users favours whatever picked its checkpoint on
    them. Training users are plentiful (8,000 on Art-Office against 577 validation users), so a
    held-out last target event of a few thousand of them separates differences of ~5 % that the
    validation users cannot. The set is fixed by ``seed`` (not the training seed), so every seed and
    strategy is selected on the same users.
    """
    if n_users <= 0:
        return {}
    cand = []
    for u in data.split_users["train"]:
        s = data.users.get(u)
        if s is not None and int((s.dom == TARGET).sum()) >= 2:
            cand.append(u)
    rng = np.random.default_rng(seed)
    chosen = sorted(cand[i] for i in rng.permutation(len(cand))[:n_users])
    out = {}
    for u in chosen:
        s = data.users[u]
        out[u] = int(np.flatnonzero(s.dom == TARGET)[-1])
    return out


def truncate_at(s: UserSeq, p: int | None) -> UserSeq:
    """The sequence strictly before position ``p`` (a held-out selection event and all after it)."""
    return s if p is None else UserSeq(s.items[:p], s.dom[:p], s.split[:p])


def make_eval_set_at(
    data: AdaptData, positions: dict[str, int], view: str, max_len: int | None, drop_target_history: bool = False
) -> EvalSet:
    """Like ``make_eval_set`` but the held-out position of each user is given (the selection set)."""
    return _eval_set(data, [(u, data.users[u], p) for u, p in positions.items() if u in data.users], view, max_len, drop_target_history)


def make_eval_set(
    data: AdaptData, users: list[str], code: int, view: str, max_len: int | None, drop_target_history: bool = False
) -> EvalSet:
    """Leave-last-out examples: history = every event before the held-out one (in ``view``).

    ``code`` selects the held-out event (SPLIT_CODES['test'] or ['valid']; valid users with no valid
    event fall back to their test event, which is not a test user's). ``drop_target_history`` builds
    the constructed cold-start view (the user's target-domain past is hidden).
    """
    rows = []
    for u in users:
        s = data.users.get(u)
        if s is None:
            continue
        p = s.heldout(code)
        if p is None and code == SPLIT_CODES["valid"]:
            p = s.heldout(SPLIT_CODES["test"])
        if p is None:
            continue
        rows.append((u, s, p))
    return _eval_set(data, rows, view, max_len, drop_target_history)


def valid_key_histories(data: AdaptData) -> tuple[list[list[tuple[str, str]]], list[str]]:
    """The validation users as a served model reads them: (full mixed-domain key histories,
    held-out target item ids), for ranking registry versions on today's data."""
    ev = make_eval_set(data, data.split_users["valid"], SPLIT_CODES["valid"], "mixed", None)
    keys = data.catalog.keys
    hists = [[keys[int(g)] for g in h] for h in ev.histories]
    targets = [keys[int(t) + data.catalog.target_offset][1] for t in ev.targets]
    return hists, targets


def _eval_set(data: AdaptData, rows: list[tuple[str, UserSeq, int]], view: str, max_len: int | None, drop_target_history: bool) -> EvalSet:
    cat = data.catalog
    ids, hists, masks, targets, cold, n_hist = [], [], [], [], [], []
    for u, s, p in rows:
        n_hist.append(int((s.dom[:p] == TARGET).sum()))
        hist = UserSeq(s.items[:p], s.dom[:p], s.split[:p])
        if drop_target_history:
            hist = hist.view("source")
        tgt_hist = hist.items[hist.dom == TARGET]
        hist = hist.view(view)
        ids.append(u)
        hists.append(hist.items if not max_len else hist.items[-(max_len - 1) :] if max_len > 1 else hist.items[:0])
        masks.append(np.unique(tgt_hist) - cat.target_offset)
        targets.append(int(s.items[p]) - cat.target_offset)
        cold.append(tgt_hist.size == 0)
    return EvalSet(ids, hists, masks, np.asarray(targets, np.int64), np.asarray(cold, bool), np.asarray(n_hist, np.int64))
