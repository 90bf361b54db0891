"""Serving latency and throughput: the Python client's direct Redis read and the HTTP API.

    python benchmarks/bench_serving.py [--quick] [--seconds 5] [--connections 16] [--rate 2000]

What it does, all on loopback against a Redis it starts itself (a free port, a temp directory):

1. loads the real catalogue titles (shared data set) and one real user's history with RecWriter,
   and a k=10 list whose explanations come from ``explain``;
2. in this process: ``PING`` and ``GET`` of the stored list (the floor of one round trip),
   ``RecClient.get`` (the Python objects) and ``RecClient.get_body`` (the API's bytes), each one
   ``GET`` since lists are stored ready to serve, p50/p99/p99.9; then the ASGI app called directly
   (no HTTP): CPU per request of each variant;
3. the API under uvicorn (uvloop + httptools, access log off), one server process per variant
   and worker count, loaded by a *separate* load-generator process (a ``select`` loop over raw
   keep-alive sockets, pre-encoded requests, one request in flight per connection, bounded by
   time and count): 1 connection closed loop (latency), ``--rate`` requests/s open loop on 8
   connections (latency measured from each request's due time: no coordinated omission), and
   ``--connections`` closed loop (throughput).

Variants: ``inline``/``async``/``thread`` are the production app in each backend mode (``inline``
with its read cache on, the default; ``inline-nocache`` is the same app with
``serving.read_cache`` off). Besides reading the one user over and over, both ``inline`` variants
(1 worker) serve a many-user mix in the open-loop run: ``--users`` (10,000) users get a list,
and the requests' users are drawn Zipf-like (rank r with probability ~ r**-s, ``--zipf`` 1.0),
50,000 pre-drawn paths sent in order from a cold cache; every run counts Redis ``GET``s per
request (``INFO commandstats``), so 1 - that is the cache's hit rate. The staleness window of
the cache is measured too: how long after a writer's ``SET`` returns its invalidation reaches
the cache. Two
baselines run in the same process and machine state, so the figures read as ratios too:
``router`` is the same app with the hot-path middleware stepped aside (FastAPI's router and
request handler serve the route, as before the fast path), ``floor`` is uvicorn answering
a constant body of the same size with no framework and no Redis (what HTTP on this machine
costs at all), and ``floor+GET`` is uvicorn answering with the stored list's bytes after one
``GET`` on a single redis-py connection, no validation, no JSON, no metrics: the least any design
that reads Redis per request can cost, so ``API - floor+GET`` is what our own Python adds.

The machine is shared and small (2 cores for server, load generator and Redis together): the
table prints the load average, and every process's CPU per request (server, Redis, load
generator), which other load disturbs far less than latency does. While batch jobs run beside
it, ``nice -n -10 python benchmarks/bench_serving.py`` (as root) gives Redis, the servers and the
load generator, which inherit the priority, the cores first, as a production box would give its
API; the title prints the niceness of the run. Latency under load is still noisy: compare a
variant with the baselines of the same run, not with another run.

Reference point: Feast's tuned Python feature server reports p99 4.6 ms for a single-row REST
request (https://feast.dev/blog/feast-online-server-performance-tuning, Redis in-cluster, so one
network hop more than our loopback).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "data" / "amazon-art-office"
USER_K = 10
VARIANT_ENV = "BENCH_SERVING_VARIANT"  # not CROSSREC_*: it configures this benchmark's factory only
BASELINES = ("router", "floor", "floor+GET")  # variants that are not the production app (see the docstring)
NO_CACHE = "inline-nocache"  # the production inline app with serving.read_cache off
MIX_USERS = 10_000  # users with a list in the many-user read mix (--users)
MIX_ZIPF = 1.0  # Zipf exponent of the mix: user of rank r is read with probability ~ r**-s (--zipf)
MIX_DRAWS = 50_000  # pre-drawn requests of the mix, sent in order (cycled)


# -- statistics --------------------------------------------------------------------------------
@dataclass
class Stats:
    n: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    rps: float | None = None
    errors: int = 0
    warmup: int = 0  # requests sent before measuring (load generator only)
    server_cpu_us: float | None = None  # API process CPU per request (all workers)
    redis_cpu_us: float | None = None  # Redis server CPU per request
    loadgen_cpu_us: float | None = None  # load generator CPU per request
    redis_gets: float | None = None  # Redis GET commands per request (1 - this = the read cache's hit rate)

    @classmethod
    def of(cls, seconds: list[float], wall_s: float | None = None, errors: int = 0) -> Stats:
        xs = sorted(seconds)
        q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))] * 1e3  # noqa: E731
        return cls(len(xs), q(0.5), q(0.99), q(0.999), len(xs) / wall_s if wall_s else None, errors)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- data --------------------------------------------------------------------------------------
def load_world(settings) -> str:
    """Write real titles, one real user's history and a list for them; return the user id."""
    import numpy as np

    from crossrec.keys import HistoryEvent
    from crossrec.publish import ItemDisplay, RecWriter, explain, make_rec_list

    writer = RecWriter.from_settings(settings)
    items: list[ItemDisplay] = []
    with gzip.open(DATA / "items.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            items.append(ItemDisplay(row["domain"], row["item_id"], row["title"], row.get("category"), row.get("brand")))
    writer.write_items(items)
    user, events = None, []
    with gzip.open(DATA / "events.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if user is None:
                user = row["user_id"]
            if row["user_id"] != user:
                break
            ts = time.mktime(time.strptime(row["ts"], "%Y-%m-%dT%H:%M:%SZ"))
            events.append(HistoryEvent(row["domain"], row["item_id"], row["event_type"], ts))
    assert user is not None
    writer.replace_history(user, events)
    rng = np.random.default_rng(0)
    seen = {e.item_id for e in events}
    office = [it.item_id for it in items if it.domain == "office" and it.item_id not in seen]
    rec_ids = [str(i) for i in rng.choice(office, size=USER_K, replace=False)]
    hist_ids = [e.item_id for e in events]
    because = explain(rng.normal(size=(USER_K, 64)), rng.normal(size=(len(hist_ids), 64)), hist_ids)
    writer.write_recs("office", user, make_rec_list(rec_ids, rng.random(USER_K), "bench-model", because=because))
    writer.write_popular("office", make_rec_list(office[:100], list(range(100, 0, -1)), "bench-model", source="popular"))
    writer.set_current_model("bench-model")
    writer.close()
    return user


def load_mix(settings, user: str, n_users: int) -> list[str]:
    """Give ``n_users`` more users the stored list of ``user`` (same bytes, their own keys)."""
    from crossrec.keys import KeySchema
    from crossrec.redis_conn import redis_client

    ks = KeySchema(settings.key_prefix)
    r = redis_client(settings)
    body = r.get(ks.recs("office", user))
    users = [f"mix-{i:06d}" for i in range(n_users)]
    pipe = r.pipeline(transaction=False)
    for i, u in enumerate(users):
        pipe.set(ks.recs("office", u), body)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    r.close()
    return users


def mix_paths(users: list[str], exponent: float, draws: int, seed: int = 0) -> list[str]:
    """Request paths whose users are drawn Zipf-like: rank r with probability ~ r**-exponent."""
    import numpy as np

    weights = np.arange(1, len(users) + 1, dtype=float) ** -exponent
    ranks = np.random.default_rng(seed).choice(len(users), size=draws, p=weights / weights.sum())
    return [f"/recommendations/office/{users[i]}?k={USER_K}" for i in ranks]


def invalidation_lag(settings, n: int) -> tuple[float, Stats | None]:
    """How long after a writer's ``SET`` returns its invalidation is visible to the read cache.

    Each trial caches the key, sets it from another connection, and spins on the cache's
    non-blocking check until the push is there (at most 50 ms). Returns the fraction of trials in
    which it was there at once, and the lag distribution of the other trials (None if none): the
    window in which a read that starts after the write completed could still be served the old value."""
    from crossrec.read_cache import ReadCache
    from crossrec.redis_conn import redis_client

    cache = ReadCache(settings, max_entries=10, max_bytes=1 << 20, socket_timeout=2.0)
    writer = redis_client(settings, pooled=False)
    key = "bench:lag"
    lags, at_once = [], 0
    clock = time.perf_counter
    try:
        for i in range(n):
            writer.set(key, b"a%d" % i)
            while cache.get(key) != b"a%d" % i or cache.invalidation_pending():
                pass  # until the key is cached and tracked, with nothing pending
            cache.get(key)
            writer.set(key, b"b%d" % i)
            t0 = clock()
            pending = at_once_now = cache.invalidation_pending()
            at_once += pending
            while not pending and clock() - t0 < 0.05:
                pending = cache.invalidation_pending()
            if not at_once_now:
                lags.append(clock() - t0)
    finally:
        cache.close()
        writer.close()
    return at_once / n, Stats.of(lags) if lags else None


# -- in-process direct reads -------------------------------------------------------------------
def time_calls(fn, n: int) -> Stats:
    for _ in range(min(500, n)):
        fn()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return Stats.of(lat)


def direct_reads(settings, user: str, n: int) -> dict[str, Stats]:
    from crossrec.client import RecClient
    from crossrec.keys import KeySchema

    ks = KeySchema(settings.key_prefix)
    out: dict[str, Stats] = {}
    with RecClient(settings) as client:
        got = client.get(user, "office", USER_K)
        assert len(got.items) == USER_K and all(r.title and r.because and r.because.title for r in got.items), got
        out["redis PING (1 round trip)"] = time_calls(client.redis.ping, n)
        out["redis GET of the stored list"] = time_calls(lambda: client.redis.get(ks.recs("office", user)), n)
        out["client.get k=10"] = time_calls(lambda: client.get(user, "office", USER_K), n)
        out["client.get_body k=10 (API bytes)"] = time_calls(lambda: client.get_body(user, "office", USER_K), n)
    return out


# -- the app variants ---------------------------------------------------------------------------
class _FloorApp:
    """ASGI app that answers every request with a constant JSON body: uvicorn's own cost."""

    def __init__(self, size: int) -> None:
        self.body = b'{"x":"' + b"x" * max(0, size - 8) + b'"}'
        self.headers = [(b"content-length", str(len(self.body)).encode()), (b"content-type", b"application/json")]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to start
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class _GetFloorApp:
    """ASGI app that answers every request with the stored list's bytes, read by one ``GET``."""

    def __init__(self, settings, user: str) -> None:
        from crossrec.keys import KeySchema
        from crossrec.redis_conn import redis_client

        self.key = KeySchema(settings.key_prefix).recs("office", user)
        self.redis = redis_client(settings, pooled=False)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = self.redis.get(self.key)
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def make_app(variant: str, settings=None, body_size: int = 2500, user: str = ""):
    """The ASGI app of a variant: production modes, or one of the BASELINES."""
    from crossrec.settings import get_settings
    from serving.app import create_app

    if variant == "floor":
        return _FloorApp(body_size)
    if variant == "floor+GET":
        return _GetFloorApp(settings or get_settings(), user)
    if variant == NO_CACHE:
        settings = settings or get_settings()
        off = settings.model_copy(update={"serving": settings.serving.model_copy(update={"read_cache": False})})
        return create_app(off, mode="inline")
    if variant == "router":
        app = create_app(settings, mode="inline")
        # With a root_path the fast-path middleware steps aside and Starlette's router strips the
        # prefix (absent from our paths), so FastAPI's own route handler serves every request.
        app.root_path = "/router-baseline"
        return app
    return create_app(settings, mode=variant)  # type: ignore[arg-type]


def response_size(settings, user: str) -> int:
    """Bytes of the real response body, so the floor variant sends as much."""
    from fastapi.testclient import TestClient

    with TestClient(make_app("inline", settings)) as http:
        return len(http.get(f"/recommendations/office/{user}?k={USER_K}").content)


# -- the API app in-process (no HTTP, no load generator): CPU per request, robust to noise ------
def asgi_cpu(settings, user: str, variants: list[str], n: int, body_size: int) -> dict[str, tuple[Stats, float]]:
    """Call the ASGI app directly, the way uvicorn would, and measure process CPU per request.

    CPU time barely depends on what else runs on the machine, so this is the fair way to compare
    the variants here; the HTTP runs below add the server's socket and parsing costs.
    """
    import uvloop

    path = f"/recommendations/office/{user}"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": f"k={USER_K}".encode(), "root_path": "",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }

    async def run(variant: str) -> tuple[Stats, float]:
        app = make_app(variant, settings, body_size)
        backend = getattr(getattr(app, "state", None), "backend", None)
        if backend is not None:
            await backend.start()
        status: list[int] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        try:
            for _ in range(300):
                await app(dict(scope), receive, send)
            lat = []
            cpu0 = time.process_time()
            for _ in range(n):
                t0 = time.perf_counter()
                await app(dict(scope), receive, send)  # a fresh scope each time, as a server makes one
                lat.append(time.perf_counter() - t0)
            cpu_us = (time.process_time() - cpu0) / n * 1e6
        finally:
            if backend is not None:
                await backend.stop()
        assert set(status) == {200}, set(status)
        return Stats.of(lat), cpu_us

    return {variant: uvloop.run(run(variant)) for variant in variants}


# -- the API server ----------------------------------------------------------------------------
def app_factory():
    """uvicorn factory for this benchmark: ``make_app`` with the variant from the environment."""
    return make_app(os.environ.get(VARIANT_ENV, "inline"), body_size=int(os.environ.get("BENCH_BODY_SIZE", "2500")),
                    user=os.environ.get("BENCH_USER", ""))


def start_server(settings, variant: str, workers: int, body_size: int, user: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    env |= {
        "CROSSREC_REDIS__URL": settings.redis.url,
        "CROSSREC_CONFIG": str(REPO_ROOT / "tests" / "data" / "empty.yaml"),
        VARIANT_ENV: variant,
        "BENCH_BODY_SIZE": str(body_size),
        "BENCH_USER": user,
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'benchmarks'}",
    }
    code = (
        "import uvicorn; uvicorn.run('bench_serving:app_factory', factory=True, host='127.0.0.1', "
        f"port={port}, workers={workers}, loop='uvloop', http='httptools', access_log=False, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server ({variant}, {workers}w) exited with {proc.returncode}")
            time.sleep(0.1)
    time.sleep(0.5 * workers)  # let every worker finish its lifespan start-up
    return proc, port


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes: robust to other load on a shared machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_loadgen(
    port: int, path: str | Path, connections: int, seconds: float, rate: float | None, server_pids: list[int],
    redis_pid: int | None, redis=None,
) -> Stats:
    """The load generator is a separate process so it does not share the server's interpreter.

    ``path`` is one request path, or a file of paths sent in order (the many-user mix). With
    ``redis`` (a client), the Redis ``GET``s executed during the run are counted per request."""
    target = ["--paths-file", str(path)] if isinstance(path, Path) else ["--path", path]
    cmd = [
        sys.executable, __file__, "--loadgen", "--port", str(port), *target,
        "--connections", str(connections), "--seconds", str(seconds), "--max-requests", "2000000",
    ] + (["--rate", str(rate)] if rate else [])
    gets = (lambda: redis.info("commandstats").get("cmdstat_get", {}).get("calls", 0)) if redis else (lambda: 0)
    before = cpu_seconds(server_pids), cpu_seconds([redis_pid] if redis_pid else []), gets()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    after = cpu_seconds(server_pids), cpu_seconds([redis_pid] if redis_pid else []), gets()
    stats = Stats(**json.loads(res.stdout.strip().splitlines()[-1]))
    # The load generator's warm-up requests are included in the CPU delta but not in n.
    requests = max(1, stats.n + stats.warmup)
    stats.server_cpu_us = (after[0] - before[0]) / requests * 1e6
    stats.redis_cpu_us = (after[1] - before[1]) / requests * 1e6
    stats.redis_gets = (after[2] - before[2]) / requests if redis else None
    return stats


# -- load generator (runs in its own process) --------------------------------------------------
CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


class _Conn:
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    __slots__ = ("sock", "buf", "need", "t0", "sent")

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.need = -1  # bytes of the whole response once its head is in, -1 before
        self.t0: float | None = None  # when the request in flight was due (None: idle)
        self.sent = 0

    def response_done(self, data: bytes) -> bool:
        """Append received bytes; True once the whole response is in (the buffer is then reset)."""
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            match = CONTENT_LENGTH.search(self.buf, 0, end)
            self.need = end + 4 + (int(match.group(1)) if match else 0)
        return len(self.buf) >= self.need


def _drive(port: int, requests: list[bytes], connections: int, seconds: float, max_requests: int, rate: float | None) -> Stats:
    """Send ``request`` on ``connections`` keep-alive sockets for ``seconds`` (or ``max_requests``).

    A hand-written ``select`` loop over raw non-blocking sockets with the request pre-encoded:
    about a third of the CPU per request of an asyncio-streams client, and ``select`` sleeps with
    microsecond precision (``epoll``, under asyncio and uvloop, rounds timeouts up to whole
    milliseconds, which an open-loop client would count as server latency).

    Closed loop (``rate`` None): each connection sends its next request as soon as the previous
    answer is in; latency is measured from the send.
    Open loop: connection ``i`` has requests *due* at ``start + (i + j * connections) / rate``;
    latency is measured from the due time, so an answer so slow that it delays the next send is
    charged to the server (no coordinated omission). Bounded: stops sending after ``seconds`` or
    ``max_requests``, then waits at most 10 s for the answers in flight.
    """
    conns = [_Conn(port) for _ in range(connections)]
    by_fd = {c.sock.fileno(): c for c in conns}
    lat: list[float] = []
    errors = 0
    budget = max_requests
    interval = connections / rate if rate else 0.0
    clock = time.perf_counter
    start = clock()
    stop_at = start + seconds
    due = [start + i / rate for i in range(connections)] if rate else [start] * connections

    def send(c: _Conn, t0: float) -> None:
        c.t0 = t0
        c.sent += 1
        c.sock.send(requests[_NEXT[0] % len(requests)])  # ~100 bytes into an empty socket buffer: never partial
        _NEXT[0] += 1

    try:
        while True:
            now = clock()
            if rate:  # open loop: send what is due on idle connections
                for i, c in enumerate(conns):
                    if c.t0 is None and due[i] <= now and due[i] < stop_at and budget > 0:
                        budget -= 1
                        send(c, due[i])
                        due[i] += interval
            elif now < stop_at:
                for c in conns:
                    if c.t0 is None and budget > 0:
                        budget -= 1
                        send(c, now)
            busy = [c.sock for c in conns if c.t0 is not None]
            timeout = None  # until the next due send of an idle connection (open loop)
            if rate and budget > 0:
                idle_due = [due[i] for i, c in enumerate(conns) if c.t0 is None and due[i] < stop_at]
                if idle_due:
                    timeout = max(0.0, min(idle_due) - clock())
            if not busy:
                if timeout is None and (rate or now >= stop_at or budget <= 0):
                    break  # nothing in flight and nothing more to send
                time.sleep(timeout or 0)
                continue
            if now > stop_at + 10:
                errors += len(busy)  # answers that never came
                break
            ready, _, _ = select.select(busy, [], [], 1.0 if timeout is None else timeout)
            for sock in ready:
                c = by_fd[sock.fileno()]
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed a keep-alive connection")
                if c.response_done(data):
                    done = clock()
                    assert c.t0 is not None
                    lat.append(done - c.t0)
                    if c.buf[9:12] != b"200":
                        errors += 1
                    c.buf, c.need, c.t0 = b"", -1, None
                    if not rate and done < stop_at and budget > 0:
                        budget -= 1
                        send(c, done)
    finally:
        for c in conns:
            c.sock.close()
    return Stats.of(lat, clock() - start, errors)


_NEXT = [0]  # index of the next request to send, across the warm-up and the measured run


def loadgen_main(args: argparse.Namespace) -> None:
    paths = Path(args.paths_file).read_text().split() if args.paths_file else [args.path]
    requests = [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode() for path in paths]
    # Warm-up, not measured: opens the server's Redis connection(s); a mix goes on where it stopped.
    warm = _drive(args.port, requests, args.connections, 0.5, 1_000_000, None)
    cpu0 = time.process_time()
    stats = _drive(args.port, requests, args.connections, args.seconds, args.max_requests, args.rate)
    stats.loadgen_cpu_us = (time.process_time() - cpu0) / max(1, stats.n) * 1e6
    stats.warmup = warm.n
    print(json.dumps(stats.__dict__))


# -- main --------------------------------------------------------------------------------------
def _label(variant: str, workers: int) -> str:
    what = {"router": "baseline: router", "floor": "baseline: floor", "floor+GET": "baseline: floor + Redis GET",
            "inline": "API inline, read cache on", NO_CACHE: "API inline, read cache off"}.get(variant, f"API {variant}")
    return f"{what}, {workers} worker{'s' if workers > 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, fewer configurations")
    parser.add_argument("--seconds", type=float, default=None, help="length of each API run")
    parser.add_argument("--connections", type=int, default=16, help="connections of the throughput run")
    parser.add_argument("--modes", default=None, help="comma-separated backend modes of the API (inline,async,thread)")
    parser.add_argument("--workers", default=None, help="comma-separated uvicorn worker counts of the API")
    parser.add_argument("--no-baselines", action="store_true", help="skip the router and floor servers")
    # load-generator mode (internal)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=MIX_USERS, help="users with a list in the many-user read mix")
    parser.add_argument("--zipf", type=float, default=MIX_ZIPF, help="Zipf exponent of the mix's user draws")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=None, help="open-loop target rate of the target run (req/s)")
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return

    from rich.console import Console
    from rich.table import Table

    from crossrec.redis_conn import redis_client
    from crossrec.services import redis_service
    from crossrec.settings import Settings

    console = Console(width=max(200, Console().width), highlight=False)  # wide tables even in a pipe
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # `serving` sits beside `crossrec`, outside the installed package
    load_before = os.getloadavg()[0]

    seconds = args.seconds or (2.0 if args.quick else 5.0)
    modes = (args.modes or ("inline" if args.quick else "inline,async,thread")).split(",")
    worker_counts = [int(w) for w in (args.workers or "1,2").split(",")]
    n_direct = 3000 if args.quick else 20000
    target_rate = args.rate or 2000.0
    # (variant, workers): every mode on 1 worker, the first mode on each other count, then the baselines.
    servers = [(m, 1) for m in modes if 1 in worker_counts] + [(modes[0], w) for w in worker_counts if w != 1]
    if "inline" in modes and 1 in worker_counts:
        servers.insert(modes.index("inline") + 1, (NO_CACHE, 1))  # the same app, read cache off
    if not args.no_baselines:
        servers += [(base, w) for base in BASELINES for w in worker_counts]

    tmp = Path(tempfile.mkdtemp(prefix="crossrec-bench-"))
    settings = Settings.model_validate({"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}, "services": {"run_dir": tmp}})
    redis = redis_service(settings)
    redis_pid = redis.start(timeout_s=30).pid
    try:
        with console.status("loading the catalogue and a user into Redis"):
            user = load_world(settings)
            body_size = response_size(settings, user)
            mix_file = tmp / "mix-paths.txt"
            mix_file.write_text("\n".join(mix_paths(load_mix(settings, user, args.users), args.zipf, MIX_DRAWS)))
        n_lag = 1000 if args.quick else 5000
        with console.status(f"invalidation lag x{n_lag}"):
            lag_at_once, lag = invalidation_lag(settings, n_lag)
        with console.status(f"direct reads x{n_direct}"):
            direct = direct_reads(settings, user, n_direct)
        with console.status("API app in-process"):
            extra = ([NO_CACHE] if "inline" in modes else []) + ([] if args.no_baselines else ["router"])
            variants = list(dict.fromkeys(modes + extra))  # floor: no work to time
            in_process = asgi_cpu(settings, user, variants, n_direct // 4, body_size)
        path = f"/recommendations/office/{user}?k={USER_K}"
        open_load = f"{target_rate:,.0f}/s open, 8 conn"
        mix_load = f"mix of {args.users:,} users, Zipf s={args.zipf:g}: {open_load}"
        counter = redis_client(settings)
        api: list[tuple[str, str, str, Stats]] = []  # variant, label, load, stats
        for variant, workers in servers:
            label = _label(variant, workers)
            with console.status(label):
                proc, port = start_server(settings, variant, workers, body_size, user)
                try:
                    pids = process_tree(proc.pid)
                    runs: list[tuple[str, str | Path, int, float | None]] = [
                        ("1 conn", path, 1, None), (open_load, path, 8, target_rate),
                        (f"{args.connections} conn", path, args.connections, None)]
                    if variant in ("inline", NO_CACHE) and workers == 1:
                        runs.append((mix_load, mix_file, 8, target_rate))
                    for load, target, conns, rate in runs:
                        api.append((variant, label, load, run_loadgen(port, target, conns, seconds, rate, pids, redis_pid, counter)))
                finally:
                    stop_server(proc)
        counter.close()
    finally:
        redis.stop()

    ping = direct["redis PING (1 round trip)"]
    table = Table(
        title=f"crossrec serving on loopback, one user, k={USER_K}, {body_size} B responses; {os.cpu_count()} cores, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other work shares the cores), nice {os.nice(0)}"
    )
    cols: tuple[str, ...] = ("path", "load", "n", "p50 ms", "p99 ms", "p99.9 ms", "req/s", "p99 / PING p99",
            "server CPU µs/req", "Redis CPU µs/req", "loadgen CPU µs/req", "GETs/req", "non-200")
    cols = tuple(c.replace(" CPU µs/req", " µs CPU") for c in cols)  # fits 200 columns
    for col in cols:
        table.add_column(col, justify="left" if col in ("path", "load") else "right", no_wrap=col in ("path", "load"))
    for name, st in direct.items():
        table.add_row(name, "in-process", str(st.n), f"{st.p50_ms:.3f}", f"{st.p99_ms:.3f}", f"{st.p999_ms:.3f}", "-",
                      f"{st.p99_ms / ping.p99_ms:.1f}x", "-", "-", "-", "-", "-")
    for variant, (st, cpu_us) in in_process.items():
        table.add_row(f"{_label(variant, 1).rsplit(',', 1)[0]} (ASGI call, no HTTP)", "in-process", str(st.n),
                      f"{st.p50_ms:.3f}", f"{st.p99_ms:.3f}", f"{st.p999_ms:.3f}", "-", f"{st.p99_ms / ping.p99_ms:.1f}x",
                      f"{cpu_us:.0f}", "-", "-", "-", "-")
    for _, label, load, st in api:
        table.add_row(label, load, str(st.n), f"{st.p50_ms:.3f}", f"{st.p99_ms:.3f}", f"{st.p999_ms:.3f}", f"{st.rps:,.0f}",
                      f"{st.p99_ms / ping.p99_ms:.1f}x", f"{st.server_cpu_us:.0f}", f"{st.redis_cpu_us:.0f}",
                      f"{st.loadgen_cpu_us:.0f}", "-" if st.redis_gets is None else f"{st.redis_gets:.2f}", str(st.errors))
    console.print(table)

    production = [(label, load, st) for variant, label, load, st in api if variant not in BASELINES]
    client = direct["client.get k=10"]
    best_label, best_open = min(((label, st) for label, load, st in production if load == open_load), key=lambda r: r[1].p99_ms)
    best_lat = min((st for _, load, st in production if load == "1 conn"), key=lambda s: s.p99_ms)
    best_tput = max((st for _, load, st in production if "open" not in load and load != "1 conn"), key=lambda s: s.rps or 0)
    checks = Table(title="targets")
    for col in ("target", "measured", "met"):
        checks.add_column(col)
    def open_run(name: str, load: str = open_load) -> Stats | None:
        """A variant's run on 1 worker at ``load`` (open loop: the ratio targets' runs)."""
        got = [st for variant, label, lo, st in api if variant == name and lo == load and label.endswith("1 worker")]
        return got[0] if got else None

    def open_cpu(name: str, load: str = open_load) -> float | None:
        run = open_run(name, load)
        return None if run is None else run.server_cpu_us

    floor_cpu, get_cpu, ours_cpu, off_cpu = open_cpu("floor"), open_cpu("floor+GET"), open_cpu(modes[0]), open_cpu(NO_CACHE)
    rows: list[tuple[str, str, bool | None]] = [
        ("client direct read p99 <= 0.5 ms", f"{client.p99_ms:.3f} ms (PING p99 {ping.p99_ms:.3f} ms)", client.p99_ms <= 0.5),
        ("client get k=10 p99 <= 2x PING p99 (same run)", f"{client.p99_ms / ping.p99_ms:.2f}x", client.p99_ms <= 2 * ping.p99_ms),
        (
            f"API p99 <= 3 ms at >= {target_rate:,.0f} req/s (open loop, best: {best_label})",
            f"p99 {best_open.p99_ms:.2f} ms at {best_open.rps:,.0f} req/s",
            best_open.p99_ms <= 3.0 and (best_open.rps or 0) >= 0.98 * target_rate,
        ),
        ("API p99, 1 connection (best config)", f"{best_lat.p99_ms:.3f} ms", best_lat.p99_ms <= 3.0),
        ("API max throughput (closed loop)", f"{best_tput.rps:,.0f} req/s", (best_tput.rps or 0) >= 2000),
    ]
    if floor_cpu and ours_cpu:
        ratio = ours_cpu / floor_cpu
        rows.append((f"API CPU/request <= 2x bare uvicorn floor ({_label(modes[0], 1)}, open loop, one user, same run)",
                     f"{ours_cpu:.0f} vs {floor_cpu:.0f} µs = {ratio:.2f}x", ratio <= 2.0))
    if floor_cpu and get_cpu:
        over = f"; the API with the read cache off adds {off_cpu - get_cpu:+.0f} µs to it" if off_cpu else ""
        rows.append(("(no target) floor + one Redis GET, passed through: the least a per-request round trip costs",
                     f"{get_cpu:.0f} µs = {get_cpu / floor_cpu:.2f}x floor{over}", None))
    if floor_cpu:  # the read cache: on and off, one user and the many-user mix, against the same floor
        for variant, load, what in ((NO_CACHE, open_load, "one user, cache off"), ("inline", mix_load, "mix, cache on"),
                                    (NO_CACHE, mix_load, "mix, cache off")):
            run = open_run(variant, load)
            if run is None or not run.server_cpu_us:
                continue
            hit = "" if run.redis_gets is None else f"; Redis GETs/req {run.redis_gets:.2f}, cache hit rate ~{max(0.0, 1 - run.redis_gets):.0%}"
            rows.append((f"API CPU/request <= 2x floor: {what} ({load})",
                         f"{run.server_cpu_us:.0f} vs {floor_cpu:.0f} µs = {run.server_cpu_us / floor_cpu:.2f}x{hit}",
                         run.server_cpu_us <= 2 * floor_cpu))
    for target, measured, met in rows:
        checks.add_row(target, measured, "-" if met is None else "[green]yes[/]" if met else "[red]no[/]")
    console.print(checks)

    cpu = min((st for _, _, st in production if st.server_cpu_us), key=lambda s: s.server_cpu_us or 1e9)
    notes = [
        f"Ratios (same run): client p99 / PING p99 = {client.p99_ms / ping.p99_ms:.1f}x; "
        f"API p99 (1 conn, best) / client p99 = {best_lat.p99_ms / client.p99_ms:.1f}x. "
        f"Lowest API CPU per request {cpu.server_cpu_us:.0f} µs (+ Redis {cpu.redis_cpu_us:.0f} µs): about "
        f"{1e6 / ((cpu.server_cpu_us or 1) + (cpu.redis_cpu_us or 0)):,.0f} req/s per fully free core."
    ]
    if "inline" in in_process and "router" in in_process:
        fast, router = in_process["inline"][1], in_process["router"][1]
        notes.append(f"In-process CPU per request: fast path {fast:.0f} µs vs router baseline {router:.0f} µs ({fast / router:.2f}x).")
    by_key = {(variant, label.rsplit(", ", 1)[1], load): st for variant, label, load, st in api}
    for count in sorted({label.rsplit(", ", 1)[1] for _, label, _, _ in api}):
        ours = by_key.get((modes[0], count, open_load))
        refs = [(base, by_key[(base, count, open_load)]) for base in BASELINES if (base, count, open_load) in by_key]
        if ours and refs:
            notes.append(
                f"Open loop, {count}: {modes[0]} p99 {ours.p99_ms:.2f} ms, server CPU {ours.server_cpu_us:.0f} µs/req; "
                + "; ".join(f"{base} p99 {ref.p99_ms:.2f} ms ({ours.p99_ms / ref.p99_ms:.2f}x), "
                            f"CPU {ref.server_cpu_us:.0f} µs/req" for base, ref in refs) + "."
            )
    notes.append(
        f"Feast's tuned Python feature server publishes p99 4.6 ms for a single-row request (REST, Redis one network "
        f"hop away, https://feast.dev/blog/feast-online-server-performance-tuning); our best API p99 here is "
        f"{best_lat.p99_ms:.2f} ms on loopback ({best_lat.p99_ms / 4.6:.2f}x of it). Loopback spares us the network hop; "
        "we pay for HTTP parsing, JSON, display data and explanations."
    )
    late = "" if lag is None else (
        f"; in the other {lag.n} it arrived after p50 {lag.p50_ms * 1e3:.0f} µs, p99 {lag.p99_ms * 1e3:.0f} µs, "
        f"max {max(lag.p999_ms, lag.p99_ms) * 1e3:.0f} µs")
    notes.append(
        f"Read cache staleness window: after a writer's SET returned, its invalidation was already readable by the "
        f"cache in {lag_at_once:.1%} of {n_lag} trials{late} (a read in that window can be served the old value). "
        f"Mix: {args.users:,} users with a list, {MIX_DRAWS:,} pre-drawn reads (Zipf s={args.zipf:g}) sent in order from a "
        "cold cache, warm-up included in the counts; hit rate ~ 1 - Redis GETs per request."
    )
    console.print("\n".join(notes))


if __name__ == "__main__":
    main()
