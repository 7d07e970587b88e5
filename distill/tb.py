"""TensorBoard logs of long jobs, written without TensorFlow, PyTorch or protobuf.

An event file is a TFRecord file of `tensorflow.Event` protocol buffers; a scalar is an Event
holding a `Summary` with one `Value{tag, simple_value}`, which TensorBoard shows under Scalars.
The few fields needed are encoded here by hand (a varint, a fixed64, a fixed32 and
length-delimited fields), so no protobuf runtime is pinned for it; `read_scalars` decodes them
back, checking every record's CRC-32C, and the tests also read them with TensorBoard's own
reader where it is installed.

    record = uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
    Event   { 1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary }
    Summary { 1: repeated Value value }      Value { 1: string tag, 2: float simple_value }

Tags follow CleanRL's conventions (`charts/episodic_return`, `charts/epsilon`, `charts/SPS`,
`losses/td_loss`, `losses/distill_loss`); `JobLog` turns a job's metric rows into them
(`distill.jobs.run` writes one under `OUT/tb/` unless told not to).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

FOLDER = "tb"  # under a job's output folder
FILE_VERSION = b"brain.Event:2"

# ---------------------------------------------------------------------------- CRC-32C


def _crc_table() -> list[int]:
    poly, table = 0x82F63B78, []  # Castagnoli, reflected
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses it; crc32c(b"123456789") = 0xE3069283."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    )


def records(blob: bytes, where: str = "event file") -> Iterator[bytes]:
    """The data of every TFRecord in `blob`; a bad CRC or a cut record raises ValueError."""
    at = 0
    while at < len(blob):
        if at + 12 > len(blob):
            raise ValueError(f"{where}: record header cut at byte {at}")
        length_bytes = blob[at : at + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (crc,) = struct.unpack("<I", blob[at + 8 : at + 12])
        if crc != masked_crc(length_bytes):
            raise ValueError(f"{where}: bad length CRC at byte {at}")
        data = blob[at + 12 : at + 12 + length]
        if len(data) < length or at + 16 + length > len(blob):
            raise ValueError(f"{where}: record cut at byte {at}")
        (crc,) = struct.unpack("<I", blob[at + 12 + length : at + 16 + length])
        if crc != masked_crc(data):
            raise ValueError(f"{where}: bad data CRC at byte {at}")
        yield data
        at += 16 + length


# ---------------------------------------------------------------------------- protocol buffers


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s as two's complement, as protobuf does
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """An Event holding one scalar summary value, encoded."""
    value_msg = _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    summary = _bytes_field(1, value_msg)
    return (
        _field(1, 1, struct.pack("<d", wall_time))
        + _field(2, 0, _varint(step))
        + _bytes_field(5, summary)
    )


def version_event(wall_time: float) -> bytes:
    """The first Event of every file: its format version."""
    return _field(1, 1, struct.pack("<d", wall_time)) + _bytes_field(3, FILE_VERSION)


def parse_message(data: bytes) -> dict[int, list]:
    """A protobuf message's fields: number -> values (ints, 8- or 4-byte strings, bytes)."""
    fields: dict[int, list] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        n, shift = 0, 0
        while True:
            b = data[at]
            at += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        elif wire == 2:
            n = varint()
            value, at = data[at : at + n], at + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `folder`: tag -> [(step, value)] in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for data in records(path.read_bytes(), str(path)):
            event = parse_message(data)
            step = event.get(2, [0])[0]
            step = step - (1 << 64) if step >= 1 << 63 else step
            for summary in event.get(5, []):
                for value in parse_message(summary).get(1, []):
                    v = parse_message(value)
                    if 2 in v:
                        tag = v[1][0].decode()
                        out.setdefault(tag, []).append((step, struct.unpack("<f", v[2][0])[0]))
    return out


# ---------------------------------------------------------------------------- writer


class EventWriter:
    """Appends scalar events to a new event file in `folder` (one file per writer, as
    TensorBoard expects: it merges every file of a run folder, so a resumed job adds one)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
        self.path = self.folder / name
        self._failed = False  # a write failed: close() then stays quiet
        self._file = open(self.path, "ab")  # noqa: SIM115  (closed by close())
        self._put(record(version_event(now)))

    def _put(self, data: bytes) -> None:
        """Append and flush; an OS error (a full disk names no file) is given our path."""
        try:
            self._file.write(data)
            self._file.flush()  # a crashed or killed run keeps what it logged
        except OSError as e:
            self._failed = True
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def scalars(self, values: dict[str, float], step: int, wall_time: float | None = None) -> None:
        """One event per tag at `step`; non-finite values are left out (a gap, not a spike)."""
        wall_time = time.time() if wall_time is None else wall_time
        events = [
            record(scalar_event(tag, float(value), int(step), wall_time))
            for tag, value in values.items()
            if math.isfinite(value)
        ]
        self._put(b"".join(events))

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:
                raise
            # the write already failed and said so: a second report on close would replace it

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- job metrics

# row key -> tag (CleanRL's names); the loss's tag depends on the job (`loss_tag`)
TAGS = {
    "mean_return": "charts/episodic_return",  # teachers: training episodes' mean return
    "score": "charts/episodic_return",  # students: evaluation score (epsilon 0.05)
    "epsilon": "charts/epsilon",
    "agreement": "charts/agreement",
    "episodes": "charts/episodes",
}
# counters and bookkeeping that are the step or not worth a chart
SKIP = {"wall_s", "env_steps", "updates", "iteration", "states", "episode_steps", "shard"}
STEP_KEYS = ("env_steps", "updates", "iteration")  # a row's own counter, if it has one


def loss_tag(kind: str) -> str:
    """`losses/distill_loss` for a student, `losses/td_loss` for a DQN (teacher, multi-task)."""
    return "losses/distill_loss" if kind == "student" else "losses/td_loss"


def row_scalars(row: dict, kind: str) -> dict[str, float]:
    """A job's metrics row as CleanRL-named scalars (lists, strings and counters left out)."""
    out = {}
    for key, value in row.items():
        if key in SKIP or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key == "loss":
            tag = loss_tag(kind)
        elif key.startswith("return "):  # the multi-task DQN's per-game returns
            tag = f"charts/episodic_return/{key.removeprefix('return ')}"
        else:
            tag = TAGS.get(key, f"charts/{key}")
        out[tag] = float(value)
    if row.get("episodes") and "episode_steps" in row:  # a dataset shard's coverage
        out["charts/mean_episode_length"] = row["episode_steps"] / row["episodes"]
    return out


class JobLog:
    """A long job's metric rows as TensorBoard scalars, with `charts/SPS` (the job's steps per
    second since the last logged row: env steps, updates or dataset states)."""

    def __init__(self, folder: str | Path, kind: str, at: int):
        self.folder, self.kind, self.writer = Path(folder), kind, None
        self.last_at, self.last_t = at, time.perf_counter()

    def log(self, rows: list[dict], at: int) -> None:
        """Log `rows` (one chunk's); `at` is where the job now is, in its own steps."""
        if not rows:
            return
        if self.writer is None:  # opened at the first row: a run that logs nothing leaves none
            self.writer = EventWriter(self.folder)
        now = time.perf_counter()
        sps = (at - self.last_at) / max(now - self.last_t, 1e-9)
        for i, row in enumerate(rows):
            step = next((int(row[k]) for k in STEP_KEYS if k in row), at)
            values = row_scalars(row, self.kind)
            if i == len(rows) - 1:
                values["charts/SPS"] = sps
            self.writer.scalars(values, step)
        self.last_at, self.last_t = at, now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def stage_scalars(stage: str, wall_s: float, summary: dict | None) -> dict[str, float]:
    """A `distill reproduce` stage's numbers: its wall time and, per group of students, the
    point estimates of `stats.summarise_stage` (geometric mean and IQM of % of the teacher,
    mean random-normalised score)."""
    out = {f"reproduce/wall_s/{stage}": float(wall_s)}
    for group, g in (summary or {}).get("groups", {}).items():
        for measure in ("geometric_mean", "iqm", "normalised_mean"):
            out[f"{stage}/{measure}/{group}"] = float(g[measure]["point"])
    return out


def log_stage(folder: str | Path, step: int, stage: str, wall_s: float, summary: dict | None):
    """`stage_scalars` at `step` (the stage's number in the suite) in a new event file."""
    with EventWriter(folder) as writer:
        writer.scalars(stage_scalars(stage, wall_s, summary), step)


def add_option(parser) -> None:
    """`--no-tb` on a long job's sub-command."""
    parser.add_argument(
        "--no-tb",
        dest="tb",
        action="store_false",
        help=f"write no TensorBoard logs (default: in OUT/{FOLDER}/)",
    )
