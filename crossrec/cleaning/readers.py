"""Find raw-log files in an input directory and read them as rows of *strings*, losing none.

Every format lands in one raw frame per kind (events or items) with the contract's field names
as string columns plus ``raw`` (the original record, for the quarantine), ``malformed`` and
``source_file``. Reading everything as strings is deliberate: typing happens later, in the
validation rules, so that a bad value becomes a quarantine reason instead of a reader error
or a silently nulled field.

- JSON lines (``.jsonl``, ``.json``, ``.ndjson``, optionally ``.gz``): read as text and parsed
  with ``from_json`` against an all-string schema; a line that is not one JSON object is kept
  with ``malformed = true``. Blank lines are not records and are not counted.
- CSV (optionally ``.gz``): header row required; columns matched by (case-insensitive) name.
- Parquet: any column types; timestamps become epoch ms, nested values JSON text.
- A file that cannot be read at all (corrupt gzip or parquet) is reported, not raised, and
  becomes one ``unreadable_file`` quarantine row.

Discovery: files directly in the input dir named ``events*`` / ``items*`` with a known
extension, plus every such file (any name) below ``events/`` and ``items/`` subfolders.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Literal

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

Kind = Literal["events", "items"]
Fmt = Literal["json", "csv", "parquet"]

EVENT_FIELDS: tuple[str, ...] = (
    "user_id", "domain", "item_id", "event_type", "ts", "rating", "event_id",
)
ITEM_FIELDS: tuple[str, ...] = (
    "domain", "item_id", "title", "attributes", "description", "category", "brand",
)
FIELDS: dict[str, tuple[str, ...]] = {"events": EVENT_FIELDS, "items": ITEM_FIELDS}
_CORRUPT = "_corrupt_record"
_JSON_EXTS = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: Kind
    fmt: Fmt

    @property
    def gzipped(self) -> bool:
        return self.path.name.lower().endswith(".gz")


@dataclass(frozen=True)
class UnreadableFile:
    path: Path
    kind: Kind
    error: str


def detect_format(path: Path) -> Fmt | None:
    """Format from the file name (``.gz`` allowed for the text formats)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(_JSON_EXTS):
        return "json"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet") and not path.name.lower().endswith(".gz"):
        return "parquet"
    return None


def discover_inputs(input_dir: Path) -> list[InputFile]:
    """All events/items files under ``input_dir`` (see module doc); raises if there are none."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input directory {input_dir} does not exist")
    found: dict[Path, InputFile] = {}
    for kind in ("events", "items"):
        candidates = [p for p in input_dir.iterdir() if p.is_file() and p.name.lower().startswith(kind)]
        sub = input_dir / kind
        if sub.is_dir():
            candidates += [p for p in sub.rglob("*") if p.is_file()]
        for path in candidates:
            if path.name.startswith(("_", ".")):
                continue  # Spark/Hadoop markers and checksums
            fmt = detect_format(path)
            if fmt is not None:
                found[path] = InputFile(path=path, kind=kind, fmt=fmt)  # type: ignore[arg-type]
    files = sorted(found.values(), key=lambda f: (f.kind, str(f.path)))
    if not any(f.kind == "events" for f in files):
        raise FileNotFoundError(
            f"no events files (events*.jsonl[.gz]|.json[.gz]|.csv|.parquet or events/) in {input_dir}"
        )
    return files


def _check_gzip(path: Path) -> str | None:
    """Decompress fully once: a truncated gzip would otherwise fail mid-job inside Spark."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _csv_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        first = fh.readline()
    line = first.decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(line)))
    return [name.strip().lower() for name in rows[0]] if rows else []


def _select_fields(df: DataFrame, kind: Kind, raw: Column, malformed: Column,
                   source: Column) -> DataFrame:
    present = set(df.columns)
    cols = [
        (F.col(f"`{name}`") if name in present else F.lit(None).cast("string")).alias(name)
        for name in FIELDS[kind]
    ]
    return df.select(source.alias("source_file"), raw.alias("raw"), malformed.alias("malformed"), *cols)


def _read_json(spark: SparkSession, files: list[InputFile], kind: Kind) -> DataFrame:
    schema = StructType(
        [StructField(n, StringType()) for n in FIELDS[kind]] + [StructField(_CORRUPT, StringType())]
    )
    text = spark.read.text([str(f.path) for f in files]).select(
        F.input_file_name().alias("_src"),
        F.regexp_replace("value", r"^\ufeff", "").alias("value"),
    )
    text = text.filter(F.regexp_replace("value", r"[\s\ufeff]", "") != "")
    if any(f.gzipped for f in files):
        # A gzip file is one task however big; spread the lines so parsing and validation use
        # every core (measured: the single-task parse dominated the job on the shared data).
        text = text.repartition(max(2, spark.sparkContext.defaultParallelism))
    parsed = text.select(
        "_src",
        "value",
        F.from_json(
            "value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
        ).alias("j"),
    ).select("_src", "value", "j.*")
    # Spark's parser accepts trailing garbage after the object ('{"a":1} junk'); a JSON-lines
    # record must be exactly one object, so the line shape is checked too.
    malformed = F.col(_CORRUPT).isNotNull() | ~F.col("value").rlike(r"(?s)^\s*\{.*\}\s*$")
    return _select_fields(parsed, kind, F.col("value"), malformed, F.col("_src"))


def _read_csv(spark: SparkSession, file: InputFile, kind: Kind) -> DataFrame | None:
    header = _csv_header(file.path)
    if not header:
        return None  # empty file: no rows
    names = [name or f"_c{i}" for i, name in enumerate(header)]
    schema = StructType([StructField(n, StringType()) for n in names])
    df = spark.read.csv(
        str(file.path), schema=schema, header=True, escape='"', mode="PERMISSIVE",
        encoding="UTF-8",
    )
    raw = F.to_json(F.struct(*[F.col(f"`{n}`") for n in names]))
    return _select_fields(df, kind, raw, F.lit(False), F.lit(file.path.as_uri()))


def _parquet_as_string(field: StructField) -> Column:
    col = F.col(f"`{field.name}`")
    dtype = field.dataType
    if isinstance(dtype, (TimestampType, TimestampNTZType)):
        return F.unix_millis(col.cast("timestamp")).cast("string")
    if isinstance(dtype, DateType):
        return F.date_format(col, "yyyy-MM-dd")
    if isinstance(dtype, (StructType, ArrayType, MapType)):
        return F.to_json(col)
    if isinstance(dtype, BinaryType):
        return F.base64(col)
    return col.cast("string")


def _read_parquet(spark: SparkSession, file: InputFile, kind: Kind) -> DataFrame:
    df = spark.read.parquet(str(file.path))
    fields = {f.name.strip().lower(): f for f in df.schema.fields}
    typed = df.select(
        F.to_json(F.struct(*[F.col(f"`{f.name}`") for f in df.schema.fields])).alias("_raw"),
        *[_parquet_as_string(f).alias(name) for name, f in fields.items() if name in FIELDS[kind]],
    )
    # Hive-style partition folders (events/domain=art/part-0.parquet) carry the value in the path.
    for part in file.path.parts:
        key, sep, value = part.partition("=")
        if sep and key.lower() in FIELDS[kind] and key.lower() not in fields:
            typed = typed.withColumn(key.lower(), F.lit(value))
    return _select_fields(typed, kind, F.col("_raw"), F.lit(False), F.lit(file.path.as_uri()))


def read_raw(spark: SparkSession, files: list[InputFile], kind: Kind
             ) -> tuple[DataFrame, list[UnreadableFile]]:
    """One string-typed raw frame for every file of ``kind``, and the files that could not be read."""
    mine = [f for f in files if f.kind == kind]
    unreadable: list[UnreadableFile] = []
    readable: list[InputFile] = []
    for f in mine:
        error = _check_gzip(f.path) if f.gzipped else None
        if error:
            unreadable.append(UnreadableFile(f.path, kind, error))
        else:
            readable.append(f)
    frames: list[DataFrame] = []
    json_files = [f for f in readable if f.fmt == "json"]
    if json_files:
        frames.append(_read_json(spark, json_files, kind))
    for f in readable:
        if f.fmt == "json":
            continue
        try:
            frame = _read_csv(spark, f, kind) if f.fmt == "csv" else _read_parquet(spark, f, kind)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a quarantined file
            unreadable.append(UnreadableFile(f.path, kind, f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        if frame is not None:
            frames.append(frame)
    if not frames:
        empty = StructType(
            [StructField("source_file", StringType()), StructField("raw", StringType())]
            + [StructField("malformed", BooleanType())]
            + [StructField(n, StringType()) for n in FIELDS[kind]]
        )
        return spark.createDataFrame([], empty), unreadable
    return reduce(DataFrame.unionByName, frames), unreadable
