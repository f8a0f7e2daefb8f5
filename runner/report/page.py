"""`runner report`: one self-contained HTML page per job, to open from disk or attach to a mail.

The figures (counts, cost, errors, runs) are written into the HTML here, so they read
without JavaScript and print as text; the charts are drawn in the browser by uPlot (MIT,
about 50 KB minified, vendored under `data/report/`), which takes series of any length and
draws them on canvas in milliseconds. Everything is inline: the page loads nothing, so
it opens the same on a laptop offline, in a ticket, or in print.

Every string from the checkpoint (custom ids, error messages, model names) is escaped:
they come from the user's spec and from the platform, and a report must not run them.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from ..cost import NANO

__all__ = ["render_report", "write_report"]

_ASSETS = ("uPlot.min.css", "report.css", "uPlot.iife.min.js", "report.js")


def _asset(name: str) -> str:
    return resources.files("runner").joinpath("data", "report", name).read_text("utf-8")


def write_report(data: dict[str, Any], target: Path, *, currency: str) -> int:
    """Write the page of `data` (from `data.load_report`); its size in bytes."""
    page = render_report(data, currency=currency).encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(page)
    tmp.replace(target)  # a reader never sees half a page
    return len(page)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _json_for_script(data: Any) -> str:
    """JSON that cannot close its <script> element or open a comment inside it."""
    text = orjson.dumps(data).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _window(start: float, end: float) -> str:
    a, b = _when(start), _when(end)
    return f"{a[:-4]} to {b[11:] if a[:10] == b[:10] else b}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _money(nano: int, currency: str, unpriced: int = 0) -> str:
    """An amount; rows of models with no price are said, never counted as 0."""
    amount = f"{nano / NANO:,.6f} {currency}"
    if not unpriced:
        return amount
    rows = f"{unpriced:,} row{'s' if unpriced != 1 else ''} with no price"
    return f"no price ({rows})" if not nano else f"at least {amount} ({rows} not counted)"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _card(label: str, value: str, key: str, note: str = "") -> str:
    extra = f'<div class="note">{note}</div>' if note else ""
    return (
        f'<div class="card" id="card-{key}"><div class="label">{_e(label)}</div>'
        f'<div class="value" data-figure="{key}">{value}</div>{extra}</div>'
    )


def _state(data: dict[str, Any]) -> str:
    s = data["summary"]
    if data["live"]:
        return f'<span class="state running">running</span> (as of {_when(data["generated_at"])})'
    if s["pending"] or s["in_progress"]:
        return '<span class="state stopped">stopped</span> (resumable: <code>runner resume</code>)'
    if s["failed"]:
        return '<span class="state failed">finished with failed rows</span>'
    return '<span class="state ok">finished</span>'


def _cards(data: dict[str, Any], currency: str) -> str:
    s, tier, span = data["summary"], data["tier"], data["span"]
    pending = f"{s['pending']:,}"
    cards = [
        _card("Rows", f"{s['total']:,}", "total"),
        _card("Succeeded", f"{s['succeeded']:,}", "succeeded"),
        _card("Failed", f"{s['failed']:,}", "failed"),
        _card(
            "Pending",
            pending,
            "pending",
            f"{s['in_progress']:,} async tasks in progress" if s["in_progress"] else "",
        ),
        _card(
            "Duration",
            _duration(span["running_s"]),
            "duration",
            _window(span["start"], span["end"]),
        ),
        _card("Cost", _e(_money(s["cost_nano"], currency, s.get("unpriced", 0))), "cost"),
    ]
    if tier["share"] is not None:
        note = (
            f"{_num(tier['mean_in_flight'], 1)} in flight on average of a cap of "
            f"{tier['cap']:,}; median {_num(tier['median_rps'], 1)} rows/s of an ideal "
            f"{_num(tier['ideal_rps'], 1)} (C/L, L = {_num(tier['typical_latency_s'], 3)} s)"
        )
        cards.append(_card("Tier used", f"{tier['share'] * 100:.0f} %", "tier", note))
    return '<section class="cards">' + "".join(cards) + "</section>"


def _models(data: dict[str, Any], currency: str) -> str:
    s = data["summary"]
    total = max(s["cost_nano"], 1)
    rows = []
    for m in s["by_model"]:
        share = 100 * m["cost_nano"] / total
        rows.append(
            f"<tr><td>{_e(m['model'])}</td><td class=n>{m['rows']:,}</td>"
            f"<td class=n>{(m['succeeded'] or 0):,}</td><td class=n>{(m['failed'] or 0):,}</td>"
            f"<td class=n>{m['prompt_tokens']:,}</td><td class=n>{m['completion_tokens']:,}</td>"
            f"<td class=n>{_e(_money(m['cost_nano'], currency, m['unpriced'] or 0))}</td>"
            f'<td class="barcell"><span class="bar" style="width:{share:.1f}%"></span></td></tr>'
        )
    return (
        '<section id="models"><h2>Cost by model</h2><table><thead><tr><th>model</th>'
        "<th class=n>rows</th><th class=n>succeeded</th><th class=n>failed</th>"
        "<th class=n>prompt tokens</th><th class=n>completion tokens</th>"
        f"<th class=n>cost ({_e(currency)})</th><th>share</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _errors(data: dict[str, Any]) -> str:
    errors = data["errors"]
    if not errors:
        return '<section id="errors"><h2>Errors</h2><p>No row failed.</p></section>'
    top = max(e["rows"] for e in errors)
    rows = []
    for e in errors:
        examples = ", ".join(f"<code>{_e(x)}</code>" for x in e["examples"])
        more = " …" if e["rows"] > len(e["examples"]) else ""
        resend = f"<code>{_e(e['retry'])}</code>" if e.get("retry") else "-"
        rows.append(
            f'<tr><td class="code">{_e(e["code"] or "-")}</td><td>{_e(e["message"])}</td>'
            f"<td class=n>{e['rows']:,}</td>"
            f'<td class="barcell"><span class="bar err" style="width:{100 * e["rows"] / top:.1f}%">'
            f"</span></td><td>{examples}{more}</td><td>{resend}</td></tr>"
        )
    return (
        '<section id="errors"><h2>Errors by platform code</h2><table><thead><tr>'
        "<th>code</th><th>message</th><th class=n>rows</th><th></th><th>example custom_ids</th>"
        "<th>resend them</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def _truncated(data: dict[str, Any]) -> str:
    t = data.get("truncated") or {"rows": 0}
    if not t["rows"]:
        return ""
    examples = ", ".join(f"<code>{_e(x)}</code>" for x in t["examples"])
    more = " …" if t["rows"] > len(t["examples"]) else ""
    return (
        '<section id="truncated"><h2>Truncated answers</h2>'
        f"<p>{t['rows']:,} answer{'s' if t['rows'] != 1 else ''} stopped at max_tokens "
        f"(finish_reason length), billed as succeeded: {examples}{more}. "
        f"Resend them with more room: <code>{_e(t['retry'])}</code></p></section>"
    )


def _figure(key: str, title: str, caption: str) -> str:
    return (
        f'<figure class="chart" id="chart-{key}"><figcaption><b>{_e(title)}</b> '
        f'<span>{_e(caption)}</span></figcaption><div class="plot"></div></figure>'
    )


def _charts(data: dict[str, Any]) -> str:
    tier, lat = data["tier"], data["latency"]
    ideal = (
        f"the dashed line is the ideal C/L = {tier['cap']:,} / {_num(tier['typical_latency_s'], 3)}"
        f" s = {_num(tier['ideal_rps'], 1)} rows/s"
        if tier["ideal_rps"]
        else "batch mode: the platform sets the pace"
        if data["job"]["mode"] == "batch"
        else "no ideal line: the concurrency cap or the latency is unknown"
    )
    figures = [
        _figure("throughput", "Throughput", f"Rows answered per second; {ideal}."),
        _figure(
            "inflight",
            "In flight against the limit",
            "Requests on the wire (mean per bucket) and the concurrency limit as the "
            "runner adapted it; red marks: 429 answers per second.",
        ),
        _figure(
            "latency",
            "Latency percentiles",
            f"Seconds from first send to answer; overall p50 {_num(lat['p50'], 3)} s, "
            f"p90 {_num(lat['p90'], 3)} s, p99 {_num(lat['p99'], 3)} s.",
        ),
        _figure(
            "latency-hist", "Latency distribution", f"{lat['count']:,} answered rows, log scale."
        ),
        _figure("cost", "Cost over time", "Cumulative cost by model."),
        _figure(
            "failures",
            "Failures and retries",
            "Rows that failed per second (errors by code below) and attempts retried per "
            "second (429s, 5xx, timeouts).",
        ),
    ]
    if data["tasks"]["count"]:
        t = data["tasks"]
        figures.append(
            _figure(
                "tasks",
                "Async tasks: time to completion",
                f"{t['count']:,} tasks from submit to done: p50 {_duration(t['p50'])}, "
                f"p90 {_duration(t['p90'])}, max {_duration(t['max'])}; {t['open']:,} open.",
            )
        )
    return (
        '<h2>Over time <span class="hint">(UTC; hover a chart for its values)</span></h2>'
        '<section class="charts">' + "".join(figures) + "</section>"
    )


def _batches(data: dict[str, Any]) -> str:
    batches = data["batches"]
    if not batches:
        return ""
    t0 = min(b["created_at"] or data["span"]["start"] for b in batches)
    t1 = max(b["updated_at"] or t0 for b in batches)
    whole = max(t1 - t0, 1e-6)
    rows = []
    for b in batches:
        start = b["created_at"] or t0
        end = b["updated_at"] or start
        left, width = 100 * (start - t0) / whole, max(0.5, 100 * (end - start) / whole)
        state = b["status"] or b["state"]
        rows.append(
            f"<tr><td>{b['key']}</td><td>{_e(b['model'])}</td><td class=n>{b['lines'] or 0:,}</td>"
            f"<td>{_e(state)}</td><td>{_duration(end - start)}</td>"
            f'<td class="gantt"><span class="span {_e(b["state"])}" '
            f'style="left:{left:.2f}%;width:{width:.2f}%"></span></td></tr>'
        )
    return (
        '<section id="batches"><h2>Batches</h2><p>Each batch file from planning to its last '
        f"step ({_when(t0)} to {_when(t1)}).</p><table><thead><tr><th>file</th><th>model</th>"
        "<th class=n>rows</th><th>status</th><th>took</th><th>timeline</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _runs(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{r['id']}</td><td>{_when(r['started_at'])}</td><td>{_when(r['ended_at'])}</td>"
        f"<td>{_e(r['outcome'])}</td><td class=n>{(r['sent'] or 0):,}</td>"
        f"<td class=n>{(r['retries'] or 0):,}</td></tr>"
        for r in data["runs"]
    )
    return (
        '<section id="runs"><h2>Runs</h2><table><thead><tr><th>run</th><th>started</th>'
        "<th>ended</th><th>outcome</th><th class=n>sent</th><th class=n>retries</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def _live_cards(live: dict[str, Any]) -> str:
    """The served page's extra figures: what only a running job has."""
    active = sum(1 for k in live["keys"] if k["state"] == "active")
    retired = [k for k in live["keys"] if k["state"] != "active"]
    note = "; ".join(f"{k['label']}: {k['state']} ({k['reason'] or '-'})" for k in retired)
    on = live["live"]
    eta = _duration(live["eta_s"]) if on and live["eta_s"] is not None else "-"
    cards = [
        _card("Rate", f"{live['rate']:,} rows/s" if on else "-", "rate"),
        _card("In flight", f"{live['in_flight']:,} / {live['cap']:,}" if on else "-", "in_flight"),
        _card("ETA", eta, "eta"),
        _card(
            "Keys",
            f"{active} of {len(live['keys'])} active" if live["keys"] else "-",
            "keys",
            _e(note),
        ),
    ]
    state = "running" if on else "not running"
    return (
        '<section class="cards" id="live"><p class=meta>Live: '
        f'<span id="live-state">{state}</span>; the figures refresh every few seconds.</p>'
        + "".join(cards)
        + "</section>"
    )


def render_report(data: dict[str, Any], *, currency: str, refresh_s: float = 5.0) -> str:
    """The page; with `data["live_figures"]` (runner serve), also the live figures and the
    script that refreshes them from the server every `refresh_s` seconds."""
    job = data["job"]
    title = f"Job report: {Path(str(job['spec'] or 'job')).name}"
    css = _asset("uPlot.min.css") + "\n" + _asset("report.css")
    js = _asset("uPlot.iife.min.js") + "\n" + _asset("report.js")
    meta = " · ".join(
        _e(x)
        for x in (
            f"job {job['job_id']}" if job["job_id"] else None,
            f"provider {job['provider']}",
            f"{job['mode']} mode",
            f"tier {job['tier']}" if job["tier"] else None,
            f"report of {_when(data['generated_at'])}",
        )
        if x
    )
    live = data.get("live_figures")
    payload = {k: v for k, v in data.items() if k != "live_figures"}
    payload["currency"] = currency
    live_part, live_js = "", ""
    if live is not None:
        config = {"every": refresh_s, "report_at": live["report_at"], "currency": currency}
        live_part = _live_cards(live)
        live_js = (
            f'<script type="application/json" id="live-config">{_json_for_script(config)}'
            f"</script><script>{_asset('report-live.js')}</script>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{css}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p class=meta>{meta}</p>"
        f"<p class=meta>spec <code>{_e(job['spec'])}</code> · {_state(data)}</p></header>"
        + _cards(data, currency)
        + live_part
        + _charts(data)
        + _models(data, currency)
        + _errors(data)
        + _truncated(data)
        + _batches(data)
        + _runs(data)
        + f"<footer>Written by <code>runner {'serve' if live else 'report'}</code> at "
        + _when(data["generated_at"])
        + "; charts by uPlot (MIT licence).</footer>"
        + f'<script type="application/json" id="report-data">{_json_for_script(payload)}</script>'
        + f"<script>{js}</script>{live_js}</body></html>"
    )
