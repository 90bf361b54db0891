"""The real-time path under load: throughput, freshness and where a batch's time goes.

    python benchmarks/bench_stream.py [--quick] [--work DIR] [--redis-port P] [--kafka-port P]

What it does, against a Redis and a broker it starts itself (``crossrec.services``, in
``--work``/run on the given ports), with real ``crossrec stream`` processes:

1. the model: the registry's current model of ``settings.work_dir`` if there is one ("the real
   current model"); otherwise it builds a realistic one once (cached in ``--work``): synthetic
   384-d item embeddings for the real catalogue's size (19,757 Office and 18,639 Art items, as
   in the shared data set), the default model (GRU, dim 64, max_len 50), one training epoch;
   the table's title says which. Every item gets a catalogue hash, and every benchmark user a
   seeded history of 20 events, so a batch scores users with realistic history lengths against
   the full target catalogue;
2. the baseline: a bare kafka-python consumer (same group settings, 500 records per poll) reading
   the same number of messages from the same broker, in this process;
3. max sustained rate: a backlog produced as fast as possible into fresh topics (2 partitions)
   while one consumer process (then two in one group) runs; rate from the first commit to the
   last, from the group's committed offsets;
4. freshness: events produced open loop (each at its due time, whatever the consumer does) at
   500 events/s and at 80 % of the one-consumer maximum, one fresh consumer process each;
   freshness is list write time minus the Kafka record timestamp, per event; at 500 events/s the
   same open-loop feed also goes to `stream_receiver.py`, a kafka-python consumer that does
   nothing (the broker chain's floor), then to one that sleeps the consumer's mean per-batch work
   (what the poll-work loop adds without using a core);
5. the split of a batch into poll / validate / apply / score / write / push / commit, from the
   one-consumer run's counters; "push" is the consumer's hand-over of the batch's touched users'
   features to the Feast push, which writes Feast's online store once per coalesced push
   (``crossrec/features/push.py``). The Feast repo is applied into the work dir's registry
   first if it has none; ``--no-push`` turns the push off for a comparison.

``--push-process`` runs the consumers' Feast push in a child process instead of on a thread;
``--consumer-env CROSSREC_X=V`` sets a consumer setting; the consumers' ``PYTHONPATH`` is this
checkout followed by the caller's (how an optional C extension such as ``crc32c``, which
kafka-python uses for its CRC checks when importable, was measured without installing it).

Run timings on a quiet machine: ``flock /tmp/crossrec-timing.lock python benchmarks/bench_stream.py``.
The title prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from crossrec.settings import Settings  # noqa: E402

REAL_ITEMS = {"office": 19_757, "art": 18_639}  # the shared data set's catalogue
SEEDED_HISTORY = 20
CONSUMER_ENV: dict[str, str] = {}  # --consumer-env: extra settings of the consumer processes
console = Console()


# -- setup ----------------------------------------------------------------------------------------
def build_model(work: Path, quick: bool) -> Path:
    """A realistic model in ``work`` (cached): the real catalogue's size, default architecture."""
    from crossrec.adaptation.model import ModelConfig
    from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
    from crossrec.adaptation.synthetic import write_synthetic
    from crossrec.adaptation.trainer import TrainConfig
    from crossrec.registry import registry_for

    if registry_for(work).current() is not None:
        return work
    with console.status("building a realistic model (synthetic 384-d embeddings, real catalogue size)"):
        write_synthetic(work, n_users=400, n_items=REAL_ITEMS["office"], dim=384, n_topics=50)
        run_adapt(
            AdaptOptions(
                input_dir=work, output_dir=work / "adapt", strategies=["pretrain_finetune_all"], seeds=[0],
                fractions=[], split_path=work / "users_split.json", registry_dir=work / "registry",
                model=ModelConfig(), train=TrainConfig(max_epochs=1, pretrain_epochs=1, patience=1),
            ),
            say=lambda _: None,
        )
    return work


def pick_model(work: Path, quick: bool) -> tuple[Path, str]:
    from crossrec.registry import registry_for

    real = Settings().work_dir
    if registry_for(real).current() is not None:
        return real, f"the current model of {real}"
    return build_model(work / "model", quick), "a realistic model built for the benchmark (no model in var/)"


def prepare_redis(settings: Settings, users: list[str], rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """Catalogue hashes for every item the model knows, seeded histories, the model pointer."""
    from crossrec.adaptation.inference import load_current
    from crossrec.keys import HistoryEvent
    from crossrec.publish import ItemDisplay, RecWriter

    recommender = load_current(settings)
    keys = [k for k in recommender._keys[1:]]  # row 0 is padding
    writer = RecWriter.from_settings(settings)
    try:
        writer.client.flushdb()
        writer.write_items(ItemDisplay(d, i, f"{d} {i}") for d, i in keys)
        writer.push_many_histories(
            (u, [HistoryEvent(*rng.choice(keys), "purchase", 1.6e9 + n) for n in range(SEEDED_HISTORY)]) for u in users
        )
        writer.set_current_model(recommender.version)
    finally:
        writer.close()
    return recommender.version, keys


def fresh_topics(base: Settings, name: str) -> Settings:
    from crossrec.services import ensure_topics

    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    kafka = base.kafka.model_copy(update={
        "events_topic": f"ev-{tag}", "items_topic": f"it-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "consumer_group": f"g-{tag}",
    })
    settings = base.model_copy(update={"kafka": kafka})
    ensure_topics(settings)
    return settings


def payloads(users: list[str], keys: list[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    out = []
    for k in range(n):
        user = rng.choice(users)
        domain, item = rng.choice(keys)
        event = {"event_id": f"b{k}-{uuid.uuid4().hex[:8]}", "user_id": user, "domain": domain, "item_id": item,
                 "event_type": "click", "ts": 1_800_000_000_000 + k, "schema_version": 1}
        out.append((user.encode(), json.dumps(event, separators=(",", ":")).encode()))
    return out


# -- processes ------------------------------------------------------------------------------------
def stream_env(settings: Settings) -> dict[str, str]:
    kafka = settings.kafka
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    env.update({
        # This checkout first; entries of the caller's PYTHONPATH after it (e.g. an optional C
        # extension installed elsewhere, to measure it).
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "CROSSREC_WORK_DIR": str(settings.work_dir), "CROSSREC_REDIS__URL": settings.redis.url,
        "CROSSREC_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CROSSREC_KAFKA__EVENTS_TOPIC": kafka.events_topic,
        "CROSSREC_KAFKA__ITEMS_TOPIC": kafka.items_topic, "CROSSREC_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "CROSSREC_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "CROSSREC_STREAMING__PUSH_FEATURES": str(settings.streaming.push_features).lower(),
        "CROSSREC_STREAMING__PUSH_PROCESS": str(settings.streaming.push_process).lower(),
        "CROSSREC_SERVING__ROUTING": str(settings.serving.routing).lower(),
    })
    env.update(CONSUMER_ENV)
    return env


def prepare_feast(settings: Settings) -> str:
    """Apply the Feast repo when the work dir has no registry yet (the consumer's push needs one)."""
    from crossrec.features.store import apply, feast_dir

    if not settings.streaming.push_features:
        return "feature push off"
    if (feast_dir(settings) / "registry.db").exists():
        return "feature push on"
    apply(settings)
    return "feature push on (Feast repo applied for the benchmark)"


class Consumers:
    """``n`` `crossrec stream` processes of one group, each with a metrics port and a stats file."""

    def __init__(self, settings: Settings, n: int, out: Path, metrics_port0: int, source: Path | None = None) -> None:
        self.out = out
        self.ports = [metrics_port0 + i for i in range(n)]
        self.source = source  # another checkout's crossrec (the --baseline-src consumer), or this one
        self.procs = []
        env = stream_env(settings)
        args = ["--heartbeat-file", str(out / "alive-{i}"), "--stats-file", str(out / "stats-{i}.json")]
        if source is not None:
            env["PYTHONPATH"] = str(source)
        for i, port in enumerate(self.ports):
            extra = [] if source else ["--metrics-port", str(port), "--freshness-file", str(out / f"fresh-{i}.json")]
            log = open(out / f"consumer-{i}.log", "ab")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "crossrec.cli", "stream", *(a.format(i=i) for a in args), *extra],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=source or REPO_ROOT, start_new_session=True,
            ))

    def wait_assigned(self, timeout_s: float = 120) -> None:
        """Until every member reports a lag series for some partition (it has an assignment).

        A baseline consumer has no metrics: it gets the group's join time (session timeout) plus
        its model load, generously."""
        if self.source is not None:
            time.sleep(20)
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all("crossrec_stream_lag{" in scrape(port) for port in self.ports):
                return
            time.sleep(0.5)
        raise RuntimeError(f"consumers not assigned within {timeout_s}s; see {self.out}")

    def stop(self) -> list[dict]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)
        return [json.loads((self.out / f"stats-{i}.json").read_text()) for i in range(len(self.procs))]

    def freshness(self, since_ms: float) -> np.ndarray:
        samples = []
        for i in range(len(self.procs)):
            samples += [lat for at, lat in json.loads((self.out / f"fresh-{i}.json").read_text()) if at >= since_ms]
        return np.asarray(samples)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def committed(settings: Settings) -> int:
    from crossrec.streaming.lag import group_lag

    return sum(r.committed or 0 for r in group_lag(settings, [settings.kafka.events_topic]))


def produce(settings: Settings, messages: list[tuple[bytes, bytes]], rate: float | None) -> float:
    """Send ``messages`` (open loop at ``rate``/s, or as fast as possible); returns seconds taken."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka.client_kwargs(), linger_ms=0 if rate else 5, acks=1)
    topic = settings.kafka.events_topic
    started = time.perf_counter()
    for n, (key, value) in enumerate(messages):
        if rate:
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.send(topic, key=key, value=value)
    producer.flush()
    took = time.perf_counter() - started
    producer.close()
    return took


def wait_committed(settings: Settings, total: int, timeout_s: float) -> tuple[float, float, int]:
    """(time of the first observed commit, time all were committed, committed at the first)."""
    deadline = time.monotonic() + timeout_s
    first_t, first_n = None, 0
    while time.monotonic() < deadline:
        n = committed(settings)
        now = time.perf_counter()
        if n and first_t is None:
            first_t, first_n = now, n
        if n >= total:
            return first_t or now, now, first_n
        time.sleep(0.2)
    raise RuntimeError(f"only {committed(settings)}/{total} committed within {timeout_s}s")


# -- measurements ---------------------------------------------------------------------------------
def bare_consume(settings: Settings, messages: list[tuple[bytes, bytes]]) -> float:
    """kafka-python alone: the same group settings and poll size, nothing done per message."""
    from stream_receiver import group_consumer

    produce(settings, messages, None)
    consumer = group_consumer(settings)
    seen, started = 0, None
    while seen < len(messages):
        batch = consumer.poll(timeout_ms=500)
        got = sum(len(v) for v in batch.values())
        if got and started is None:
            started = time.perf_counter()
            first = got
        seen += got
        if got:
            consumer.commit()
    rate = (seen - first) / (time.perf_counter() - started)
    consumer.close()
    return rate


def max_rate(
    base: Settings, n_consumers: int, messages: list[tuple[bytes, bytes]], out: Path, port0: int, source: Path | None = None
) -> tuple[float, list[dict]]:
    name = f"max{n_consumers}" + ("-baseline" if source else "")
    settings = fresh_topics(base, name)
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    group = Consumers(settings, n_consumers, run, port0, source)
    try:
        group.wait_assigned()
        produce(settings, messages, None)
        first_t, last_t, first_n = wait_committed(settings, len(messages), 600)
    finally:
        stats = group.stop()
    return (len(messages) - first_n) / max(last_t - first_t, 1e-9), stats


def freshness_at(base: Settings, rate: float, seconds: float, users, keys, rng, out: Path, port0: int) -> tuple[np.ndarray, dict]:
    """Produce -> list write latencies of one consumer fed open loop at ``rate``, and its stats."""
    settings = fresh_topics(base, f"fresh{int(rate)}")
    run = out / f"fresh{int(rate)}"
    run.mkdir(parents=True, exist_ok=True)
    messages = payloads(users, keys, int(rate * seconds), rng)
    group = Consumers(settings, 1, run, port0)
    try:
        group.wait_assigned()
        since = time.time() * 1000
        took = produce(settings, messages, rate)
        wait_committed(settings, len(messages), 300)
    finally:
        stats = group.stop()
    _warn_if_slow(rate, seconds, took)
    return group.freshness(since), stats[0]


def chain_at(base: Settings, rate: float, seconds: float, users, keys, rng, out: Path, work_ms: float) -> np.ndarray:
    """Produce -> receive latencies of `stream_receiver.py` (no work, or ``work_ms`` of sleep per batch) at ``rate``."""
    settings = fresh_topics(base, f"chain{int(rate)}-{work_ms:.0f}")
    run = out / f"chain{int(rate)}-{work_ms:.0f}ms"
    run.mkdir(parents=True, exist_ok=True)
    messages = payloads(users, keys, int(rate * seconds), rng)
    ready, result = run / "ready", run / "latencies.json"
    with open(run / "receiver.log", "ab") as log:
        receiver = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "stream_receiver.py"), str(len(messages)), str(result),
             "--work-ms", str(work_ms), "--ready", str(ready)],
            env=stream_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if receiver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not get its partitions; see {run / 'receiver.log'}")
            time.sleep(0.2)
        took = produce(settings, messages, rate)
        receiver.wait(timeout=300)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    _warn_if_slow(rate, seconds, took)
    return np.asarray(json.loads(result.read_text()))


def _warn_if_slow(rate: float, seconds: float, took: float) -> None:
    if took > seconds * 1.1:
        console.print(f"[yellow]the producer could not keep {rate:.0f}/s: took {took:.1f}s for {seconds:.0f}s of events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, shorter open-loop phases")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "var" / "bench_stream")
    parser.add_argument("--redis-port", type=int, default=16410)
    parser.add_argument("--kafka-port", type=int, default=16411)
    parser.add_argument("--metrics-port", type=int, default=16420, help="first of three consecutive ports")
    parser.add_argument("--baseline-src", type=Path, help="a checkout of an older crossrec: its consumer's max rate too, same run")
    parser.add_argument("--only-max", action="store_true", help="skip the freshness phases")
    parser.add_argument("--no-push", action="store_true", help="consumers do not push user features to Feast")
    parser.add_argument("--push-process", action="store_true", help="push in a child process, not on a thread of the consumer")
    parser.add_argument("--no-routing", action="store_true", help="consumers serve the plain model of a routed version")
    parser.add_argument("--consumer-env", action="append", default=[], metavar="CROSSREC_X=V",
                        help="a setting of the consumer processes (repeatable), e.g. CROSSREC_STREAMING__FETCH_MAX_WAIT_MS=2")
    args = parser.parse_args()
    CONSUMER_ENV.update(kv.split("=", 1) for kv in args.consumer_env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from crossrec.services import services_down, services_up

    n_events = 10_000 if args.quick else 40_000
    seconds = 8.0 if args.quick else 30.0
    n_users = 2_000 if args.quick else 8_000
    load_before = os.getloadavg()
    rng = random.Random(0)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, model_note = pick_model(args.work, args.quick)
    base = Settings(
        work_dir=model_dir,
        redis={"url": f"redis://127.0.0.1:{args.redis_port}/0"},
        kafka={"bootstrap_servers": f"127.0.0.1:{args.kafka_port}", "partitions": 2},
        services={"run_dir": args.work / "run"},
        streaming={"push_features": not args.no_push, "push_process": args.push_process},
        serving={"routing": not args.no_routing},
    )
    services_up(base)
    out = args.work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    try:
        users = [f"bench-{u:05d}" for u in range(n_users)]
        version, keys = prepare_redis(base, users, rng)
        push_note = prepare_feast(base)
        n_target = sum(1 for d, _ in keys if d == base.target_domain)
        messages = payloads(users, keys, n_events, rng)

        with console.status("bare kafka-python consume loop"):
            bare = bare_consume(fresh_topics(base, "bare"), messages)
        with console.status("one consumer: max sustained rate"):
            one, one_stats = max_rate(base, 1, messages, out, args.metrics_port)
        with console.status("two consumers, one group: max sustained rate"):
            two, _ = max_rate(base, 2, payloads(users, keys, n_events, rng), out, args.metrics_port + 1)
        baseline = None
        if args.baseline_src:
            with console.status(f"baseline consumer from {args.baseline_src}: max sustained rate"):
                baseline, _ = max_rate(base, 1, payloads(users, keys, n_events // 4, rng), out, 0, args.baseline_src)
        fresh, chain = {}, {}
        for rate in () if args.only_max else (500.0, round(0.8 * one)):
            with console.status(f"freshness at {rate:.0f} events/s, open loop"):
                fresh[rate], fresh_stats = freshness_at(base, rate, seconds, users, keys, rng, out, args.metrics_port)
            if rate == 500.0:
                # The same rate through a consumer that does nothing, then one that sleeps the
                # consumer's mean work per batch (every stage but the poll): the broker chain's
                # floor, and what the loop's shape adds to it without any CPU.
                work_ms = 1000 * (sum(fresh_stats["stage_s"].values()) - fresh_stats["stage_s"].get("poll", 0.0))
                work_ms /= max(fresh_stats["batches"], 1)
                for sleep_ms in (0.0, work_ms):
                    with console.status(f"broker chain at {rate:.0f} events/s, {sleep_ms:.1f} ms of sleep per batch"):
                        chain[sleep_ms] = chain_at(base, rate, seconds, users, keys, rng, out, sleep_ms)
    finally:
        services_down(base)
    load_after = os.getloadavg()

    title = (f"crossrec stream: {model_note} ({version}, {n_target:,} target items scored per user); "
             f"{n_events:,} events; {push_note}{' (child process)' if args.push_process else ''}; routing {'off' if args.no_routing else 'on'}; "
             f"{' '.join(args.consumer_env) + '; ' if args.consumer_env else ''}load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    table = Table(title=title)
    for col in ("measure", "value", "note"):
        table.add_column(col)
    table.add_row("bare kafka-python consume loop", f"{bare:,.0f} msg/s", "same broker, same poll size, nothing done")
    table.add_row("one consumer, max sustained", f"{one:,.0f} events/s", f"{one / bare:.1%} of the bare loop")
    table.add_row("two consumers (2 partitions), max", f"{two:,.0f} events/s", f"{two / one:.2f}x one consumer")
    if baseline:
        table.add_row(f"baseline consumer ({args.baseline_src}), max", f"{baseline:,.0f} events/s",
                      f"one consumer is {one / baseline:.2f}x it")
    for rate, samples in fresh.items():
        table.add_row(f"freshness at {rate:,.0f} events/s", f"p50 {np.percentile(samples, 50):.1f} ms, p99 {np.percentile(samples, 99):.1f} ms",
                      f"{samples.size:,} events, produce -> list write")
    for sleep_ms, samples in chain.items():
        what = "does nothing" if not sleep_ms else f"sleeps {sleep_ms:.1f} ms per batch (the consumer's mean work at 500/s)"
        table.add_row("broker chain at 500 events/s", f"p50 {np.percentile(samples, 50):.1f} ms, p99 {np.percentile(samples, 99):.1f} ms",
                      f"{samples.size:,} events; a kafka-python consumer that {what}")
    s = one_stats[0]
    batches_done = max(s["batches"], 1)
    push_ms, batch_ms = 1000 * s["stage_s"].get("push", 0.0) / batches_done, 1000 * sum(s["stage_s"].values()) / batches_done
    table.add_row("feature push to Feast, one consumer: main loop", f"{push_ms:.2f} ms of {batch_ms:.2f} ms per batch",
                  f"{push_ms / max(batch_ms, 1e-9):.0%} of a batch; {s['consumed'] / batches_done:.0f} events/batch; {push_note}")
    if s.get("pushes"):
        busy_ms = 1000 * s["push_busy_s"] / s["pushes"]
        where = "child process" if args.push_process else "worker thread"
        table.add_row(f"feature push to Feast: {where}", f"{busy_ms:.2f} ms per push, {s['pushes']} pushes",
                      f"{s['batches'] / s['pushes']:.2f} batches per push (coalesced); overlaps the next batches")
    console.print(table)


    batches = max(s["batches"], 1)
    split = Table(title=f"one consumer: time per batch ({batches} batches, {s['consumed'] / batches:.0f} events/batch)")
    for col in ("stage", "ms / batch", "share", "µs / event"):
        split.add_column(col, justify="right")
    total_s = sum(s["stage_s"].values())
    for stage, sec in s["stage_s"].items():
        split.add_row(stage, f"{1000 * sec / batches:.2f}", f"{sec / total_s:.0%}", f"{1e6 * sec / max(s['consumed'], 1):.0f}")
    console.print(split)

    targets = Table(title="targets (2 cores)")
    for col in ("target", "measured", "ok"):
        targets.add_column(col)
    rows = [(">= 2,000 events/s per consumer", f"{one:,.0f}", one >= 2000)]
    if 500.0 in fresh:
        p99_500 = float(np.percentile(fresh[500.0], 99))
        floor = f"; the broker chain alone: {np.percentile(chain[0.0], 99):.1f} ms" if 0.0 in chain else ""
        rows.append(("p99 freshness <= 50 ms at 500 events/s", f"{p99_500:.1f} ms{floor}", p99_500 <= 50))
    rows.append(("two consumers >= 1.6x one", f"{two / one:.2f}x", two / one >= 1.6))
    for name, value, ok in rows:
        targets.add_row(name, value, "[green]yes" if ok else "[red]no")
    console.print(targets)
    console.print(f"raw runs: {out}")


if __name__ == "__main__":
    main()
