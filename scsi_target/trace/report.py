"""Replay results: per-command outcomes summed per opcode, latency statistics,
the differences, and their JSON and console renderings."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .compare import Difference, Outcome
from .records import Exchange, Trace, command_name


def latency_stats(values: list[float]) -> dict | None:
    """mean / p50 / p95 / p99 / max in microseconds (None without samples)."""
    if not values:
        return None
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]

    us = 1e6
    return {"n": len(v), "mean_us": round(statistics.fmean(v) * us, 1),
            "p50_us": round(pct(0.50) * us, 1), "p95_us": round(pct(0.95) * us, 1),
            "p99_us": round(pct(0.99) * us, 1), "max_us": round(v[-1] * us, 1)}


@dataclass
class OpcodeStats:
    name: str
    count: int = 0
    matched: int = 0
    differed: int = 0
    unanswered: int = 0        # no answer in the recording: replayed, not compared
    recorded: list = field(default_factory=list)
    replayed: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "count": self.count, "matched": self.matched,
                "differed": self.differed, "unanswered_in_recording": self.unanswered,
                "recorded_latency": latency_stats(self.recorded),
                "replay_latency": latency_stats(self.replayed)}


class ReplayReport:
    def __init__(self, trace: Trace, target: str, left_out: dict[str, int]) -> None:
        self.trace = trace
        self.target = target
        self.left_out = dict(left_out)
        self.by_opcode: dict[int, OpcodeStats] = {}
        self.differences: list[Difference] = []
        self.replayed = 0
        self.matched = 0
        self.differed = 0
        self.errors = 0
        self.elapsed = 0.0
        self.stopped_at: int | None = None
        self.seeded_bytes = 0
        self.dry_run = False

    def _stats(self, ex: Exchange) -> OpcodeStats:
        st = self.by_opcode.get(ex.opcode)
        if st is None:
            st = self.by_opcode[ex.opcode] = OpcodeStats(command_name(ex.cdb[:1] + ex.cdb[1:]))
        return st

    def add(self, ex: Exchange, got: Outcome | None, diffs: list[Difference]) -> None:
        st = self._stats(ex)
        st.count += 1
        if ex.latency is not None:
            st.recorded.append(ex.latency)
        if got is None:             # dry run
            return
        self.replayed += 1
        st.replayed.append(got.latency)
        if got.error:
            self.errors += 1
        if ex.status is None:
            st.unanswered += 1
        elif diffs:
            st.differed += 1
            self.differed += 1
            self.differences.extend(diffs)
        else:
            st.matched += 1
            self.matched += 1

    @property
    def same(self) -> bool:
        return not self.differed and not self.errors

    @property
    def rate(self) -> float:
        return self.replayed / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "target": None if self.dry_run else self.target,
            "dry_run": self.dry_run,
            "trace": {"source": self.trace.header.get("source"),
                      "capture": self.trace.header.get("capture"),
                      "commands": len(self.trace.commands), "tmfs": len(self.trace.tmfs),
                      "nexuses": [n.to_json() for n in self.trace.nexuses]},
            "replayed": self.replayed, "matched": self.matched, "differed": self.differed,
            "transport_errors": self.errors, "left_out": self.left_out,
            "seeded_bytes": self.seeded_bytes, "stopped_at": self.stopped_at,
            "elapsed_s": round(self.elapsed, 6), "commands_per_s": round(self.rate, 1),
            "by_opcode": {f"0x{op:02x}": st.to_json()
                          for op, st in sorted(self.by_opcode.items())},
            "differences": [d.to_json() for d in self.differences],
            "same": self.same,
        }


def render(report: ReplayReport, console, max_differences: int = 50) -> None:
    """The report for people, with rich tables."""
    from rich.table import Table
    t = report.trace
    head = (f"trace: {len(t.commands)} commands, {len(t.tmfs)} task management functions, "
            f"{len(t.nexuses)} I_T_L nexuses")
    if t.header.get("capture"):
        head += f" (from {t.header['capture']})"
    console.print(head)
    if not report.dry_run:
        console.print(f"target: {report.target}")
    if report.left_out:
        console.print("left out: " + ", ".join(f"{n} ({why})"
                                               for why, n in sorted(report.left_out.items())))
    if report.seeded_bytes:
        console.print(f"seeded {report.seeded_bytes} bytes from the trace's reads")
    table = Table(title="per opcode", show_lines=False)
    for col in ("opcode", "command", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    if not report.dry_run:
        table.add_column("matched", justify="right")
        table.add_column("differed", justify="right")
    table.add_column("recorded µs p50/p99", justify="right")
    if not report.dry_run:
        table.add_column("replay µs p50/p99", justify="right")

    def lat(v):
        s = latency_stats(v)
        return "-" if s is None else f"{s['p50_us']:.0f} / {s['p99_us']:.0f}"

    for op, st in sorted(report.by_opcode.items()):
        row = [f"{op:02X}h", st.name, str(st.count)]
        if not report.dry_run:
            row += [str(st.matched),
                    f"[red]{st.differed}[/red]" if st.differed else "0"]
        row.append(lat(st.recorded))
        if not report.dry_run:
            row.append(lat(st.replayed))
        table.add_row(*row)
    console.print(table)
    if report.dry_run:
        console.print("dry run: nothing sent")
        return
    if report.differences:
        d = Table(title=f"differences ({len(report.differences)}"
                        + (f", first {max_differences}" if len(report.differences)
                           > max_differences else "") + ")")
        for col in ("seq", "command", "field", "recorded", "replayed"):
            d.add_column(col)
        for diff in report.differences[:max_differences]:
            d.add_row(str(diff.seq), diff.name, diff.field, diff.recorded, diff.replayed)
        console.print(d)
    verdict = "[green]same[/green]" if report.same else "[red]different[/red]"
    stop = f", stopped at command {report.stopped_at}" if report.stopped_at is not None else ""
    console.print(f"replayed {report.replayed}: {report.matched} matched, {report.differed} "
                  f"differed, {report.errors} transport errors in {report.elapsed:.3f} s "
                  f"({report.rate:.0f} commands/s){stop}: {verdict}")
