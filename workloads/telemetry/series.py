"""The raw telemetry series as a gzipped CSV: small, readable by any tool (pandas, a spreadsheet, zcat).

One row per sample and GPU (or MIG instance); a run without a GPU has one row per sample with an empty
``gpu``. Power-domain columns of a MIG instance repeat its GPU's. Empty cells mean "not known".
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence

from workloads.telemetry.readings import DomainReading, GpuUnit, Sample, UnitReading

COLUMNS = (
    "t_s",
    "label",
    "gpu",
    "uuid",
    "gpu_util_pct",
    "fb_used_bytes",
    "fb_total_bytes",
    "process_fb_used_bytes",
    "power_w",
    "energy_mj",
    "temp_c",
    "sm_clock_mhz",
    "throttle_mask",
    "ecc_uncorrected",
    "xid",
    "host_cpu_pct",
    "host_mem_used_bytes",
    "process_cpu_pct",
    "process_rss_bytes",
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def encode_series(samples: Iterable[Sample], units: Sequence[GpuUnit]) -> bytes:
    """CSV.gz bytes of the samples (gzip without a timestamp: the same samples give the same bytes)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in samples:
        h = s.host
        host = (h.cpu_pct, h.mem_used, h.proc_cpu_pct, h.proc_rss)
        if not units:
            writer.writerow([_cell(v) for v in (round(s.t, 4), s.label, "", "", *([None] * 11), *host)])
            continue
        for i, unit in enumerate(units):
            u: UnitReading | None = s.units[i] if i < len(s.units) else None
            d: DomainReading | None = s.domains[unit.domain] if unit.domain < len(s.domains) else None
            gpu = (u.util_pct, u.mem_used, u.mem_total, u.proc_mem) if u is not None else (None,) * 4
            dom = (
                (d.power_w, d.energy_mj, d.temp_c, d.sm_clock_mhz, d.throttle, d.ecc_uncorrected,
                 " ".join(map(str, d.xids)) or None)
                if d is not None
                else (None,) * 7
            )  # fmt: skip
            writer.writerow([_cell(v) for v in (round(s.t, 4), s.label, unit.key, unit.uuid, *gpu, *dom, *host)])
    return gzip.compress(text.getvalue().encode(), mtime=0)


def read_series(data: bytes) -> list[dict[str, str]]:
    """Rows of a series as dicts of strings (empty string: unknown), for reports and tests."""
    return list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
