"""Targets and markdown tables of the evaluation benchmark."""

from __future__ import annotations

import math
from typing import Any

from eval_phases import DIRECT, OFF, ON
from report import _fmt

KEEPS_UP_TTFT_P99_MS = 500.0
"""A target keeps up with an offered rate when every request of the window finished without error
and TTFT p99 stayed under this (an unloaded 100-token stream lasts ~105 ms; a p99 TTFT over 500 ms
means requests queue for CPU longer than four whole streams)."""


def keeps_up(row: dict[str, Any]) -> bool:
    return row["errors"] == 0 and row["ttft_p99_ms"] <= KEEPS_UP_TTFT_P99_MS


def _n(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.0f}"


def _s(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if math.isinf(v):
        return "> last bucket"
    return f"{v:.2f}"


def probe_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| offered req/s | target | completed req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | errors "
             "| max in flight | send late p99 ms | gateway (or sim) cores | sim cores | load gen cores "
             "| rest of host cores | host busy % | keeps up |", "|" + "---|" * 15]
    for r in rows:
        lines.append("| " + " | ".join([
            _fmt(r["rate"], 0), r["target"], _fmt(r["completed_rps"]), _fmt(r["ttft_p50_ms"], 2),
            _fmt(r["ttft_p99_ms"], 2), _fmt(r["total_p50_ms"]), str(r["errors"]), str(r["max_in_flight"]),
            _fmt(r["send_late_p99_ms"], 1), _fmt(r["server_cores"], 2), _fmt(r["sim_cores"], 2),
            _fmt(r["loadgen_cores"], 2), _fmt(r["rest_cores"], 2), _fmt(r["host_busy_pct"], 0),
            "yes" if keeps_up(r) else "no",
        ]) + " |")
    return "\n".join(lines)


def ladder(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe's rows plus the blocks' pooled cells, by rate: which rates each target keeps up with."""
    rows = [dict(r, source="probe") for r in result.get("probe", [])]
    for b in result["blocks"]:
        for name in (DIRECT, OFF, ON):
            c = b["cells"].get(name)
            if c:
                rows.append({"rate": b["rate"], "target": name, "completed_rps": c["rps"],
                             "ttft_p50_ms": c["ttft_p50_ms"], "ttft_p99_ms": c["ttft_p99_ms"],
                             "total_p50_ms": c["total_p50_ms"], "errors": c["errors"],
                             "max_in_flight": c["max_in_flight"], "send_late_p99_ms": c["send_late_p99_ms_worst"],
                             "server_cores": c["server_cores"], "sim_cores": c["sim_cores"],
                             "loadgen_cores": c["loadgen_cores"], "host_busy_pct": c["host_cpu_busy_pct"],
                             "rest_cores": c["rest_cores"],
                             "source": "block"})
    order = {DIRECT: 0, OFF: 1, ON: 2}
    return sorted(rows, key=lambda r: (r["rate"], order[r["target"]]))


def cells_table(block: dict[str, Any]) -> str:
    lines = ["| cell | offered req/s | completed req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms "
             "| errors | max in flight | gateway (or sim) cores | gateway CPU ms/req | sim cores | load gen cores "
             "| other gateway cores | rest of host cores | host busy % |", "|" + "---|" * 16]
    for name in (DIRECT, OFF, ON):
        c = block["cells"].get(name)
        if not c:
            continue
        lines.append("| " + " | ".join([
            name, _fmt(c["offered_rps"], 0), _fmt(c["rps"]), _fmt(c["ttft_p50_ms"], 2), _fmt(c["ttft_p99_ms"], 2),
            _fmt(c["total_p50_ms"]), _fmt(c["total_p99_ms"]), str(c["errors"]), str(c["max_in_flight"]),
            _fmt(c["server_cores"], 2), "(sim)" if name == DIRECT else _fmt(c["server_cpu_ms_per_req"], 2),
            _fmt(c["sim_cores"], 2), _fmt(c["loadgen_cores"], 2), _fmt(c["other_cores"], 2),
            _fmt(c["rest_cores"], 2), _fmt(c["host_cpu_busy_pct"], 0),
        ]) + " |")
    return "\n".join(lines)


def derived_table(block: dict[str, Any], sample_rate: float = 0.05) -> str:
    d = block["derived"]
    lines = ["| | added TTFT p50 ms | added TTFT p99 ms |", "|---|---|---|"]
    lines.append(f"| evaluation off | {_fmt(d.get('added_ttft_p50_ms_' + OFF), 2)} "
                 f"| {_fmt(d.get('added_ttft_p99_ms_' + OFF), 2)} |")
    lines.append(f"| evaluation on ({sample_rate:.0%}, judge) | {_fmt(d.get('added_ttft_p50_ms_' + ON), 2)} "
                 f"| {_fmt(d.get('added_ttft_p99_ms_' + ON), 2)} |")
    lines.append(f"| change | {_fmt(d.get('change_p50_ms'), 2)} | {_fmt(d.get('change_p99_ms'), 2)} |")
    lines.append(f"| noise (spread between eval-off pairs) | {_fmt(d.get('noise_p50_ms'), 2)} "
                 f"| {_fmt(d.get('noise_p99_ms'), 2)} |")
    out = "\n".join(lines)
    for mode in (OFF, ON):
        pairs = d["pairs"].get(mode) or []
        out += (f"\n\nPer adjacent pair (gateway minus direct segment, p50/p99 ms), {mode}: "
                + ", ".join(f"{p['p50']:.2f}/{p['p99']:.2f}" for p in pairs))
    return out


def pipeline_table(blocks: list[dict[str, Any]], store: dict[str, Any] | None) -> str:
    lines = ["| offered req/s | requests (eval-on) | sampled (random) | observed rate [99% interval] "
             "| sampled per s of load | tasks published / dropped / evaluated | judge calls | judge failures "
             "| judge s mean | lag p50 / p99 / max bucket (s, histogram) | lag p50 / p99 / max (s, eval_results) "
             "| settled after load s |", "|" + "---|" * 12]
    for b in blocks:
        p, s, h = b["pipeline"], b["sampling"], b["lag_histogram"]
        st = (store or {}).get("blocks", {}).get(str(b["rate"]), {})
        jh = b["judge_histogram"]
        lines.append("| " + " | ".join([
            _fmt(b["rate"], 0), _n(p["requests"]), _n(p["sampled_random"]),
            f"{100 * s['observed_rate']:.2f}% [{100 * s['interval_99'][0]:.2f}, {100 * s['interval_99'][1]:.2f}]"
            if s["observed_rate"] is not None else "–",
            _fmt(b["rate"] * (s["observed_rate"] or 0.0), 1),
            f"{_n(p['published'])} / {_n(p['dropped'])} / {_n(p['evaluated'])}", _n(p["judge_calls"]),
            _n(p["judge_failures"]), _s(jh["mean_s"]),
            f"≤{_s(h['p50_le_s'])} / ≤{_s(h['p99_le_s'])} / ≤{_s(h['max_le_s'])}",
            f"{_s(st.get('lag_p50_s'))} / {_s(st.get('lag_p99_s'))} / {_s(st.get('lag_max_s'))}",
            _fmt(b["settle_s"], 1),
        ]) + " |")
    return "\n".join(lines)


def cost_rows(store: dict[str, Any], prices: dict[str, dict[str, Any]], configured: str) -> list[dict[str, Any]]:
    """Per evaluation: tokens in and out (from the judge's total tokens and the cost at the configured
    prices: two equations, two unknowns), then the cost per 1,000 evaluations at each price."""
    a = store["all"]
    n = a["judged_traces"] or 0
    if not n or not a["judge_tokens"]:
        return []
    cfg = prices[configured]
    p_in, p_out = cfg["input_per_1m"], cfg["output_per_1m"]
    tokens = a["judge_tokens"] / n
    cost = a["judge_cost"] / n
    out_tok = (cost * 1e6 - p_in * tokens) / (p_out - p_in) if p_out != p_in else float("nan")
    in_tok = tokens - out_tok
    rows = []
    for name, p in prices.items():
        per_eval = (in_tok * p["input_per_1m"] + out_tok * p["output_per_1m"]) / 1e6
        rows.append({"judge_price": name, "input_per_1m": p["input_per_1m"], "output_per_1m": p["output_per_1m"],
                     "source": p["source"], "evaluations": n, "tokens_per_eval": tokens,
                     "input_tokens_per_eval": in_tok, "output_tokens_per_eval": out_tok,
                     "cost_per_1000": per_eval * 1000, "measured": name == configured,
                     "cost_per_1000_from_judge_cost": cost * 1000 if name == configured else None})
    return rows


def cost_table(rows: list[dict[str, Any]], evals_per_day: float) -> str:
    lines = ["| judge price (per 1M tokens in / out) | evaluations | tokens per evaluation (in + out) "
             "| cost per 1,000 evaluations | per day at 10x seed (%s evaluations) |" % _n(evals_per_day),
             "|---|---|---|---|---|"]
    for r in rows:
        tag = " (configured; measured judge_cost)" if r["measured"] else " (same tokens, other price)"
        lines.append(f"| {r['judge_price']} ${r['input_per_1m']:.2f} / ${r['output_per_1m']:.2f}{tag} "
                     f"| {_n(r['evaluations'])} | {r['tokens_per_eval']:.0f} ({r['input_tokens_per_eval']:.0f} + "
                     f"{r['output_tokens_per_eval']:.0f}) | ${r['cost_per_1000']:.4f} "
                     f"| ${r['cost_per_1000'] * evals_per_day / 1000:,.2f} |")
    return "\n".join(lines)


def sampler_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| trace ids | n | rate | sampled | observed rate | 99% interval | inside | µs per decision |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ids']} | {_n(r['n'])} | {r['rate']:.2f} | {_n(r['sampled'])} "
                     f"| {100 * r['observed_rate']:.3f}% | [{100 * r['interval_99'][0]:.3f}%, "
                     f"{100 * r['interval_99'][1]:.3f}%] | {'yes' if r['inside'] else 'NO'} "
                     f"| {r['us_per_decision']:.2f} |")
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: str, ok: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "pass": ok})

    blocks = result["blocks"]
    store = result.get("store") or {}
    main = max(blocks, key=lambda b: b["rate"]) if blocks else None
    if main:
        rate = main["rate"]
        h = main["lag_histogram"]
        st = store.get("blocks", {}).get(str(rate), {})
        lag_ok = main["settled"] and h["p99_le_s"] is not None and h["p99_le_s"] <= 300 \
            and st.get("lag_max_s") is not None and st["lag_max_s"] < 300
        seed = " (10x seed)" if abs(rate - 231) < 1 else ""
        add(f"eval lag @{rate:.0f} req/s{seed}, judge 1 s", "p99 < 5 min",
            f"p99 ≤{_s(h['p99_le_s'])} s (histogram), exact p99 {_s(st.get('lag_p99_s'))} s, "
            f"max {_s(st.get('lag_max_s'))} s", lag_ok)
    life = result.get("pipeline_total") or {}
    a = store.get("all", {})
    if life:
        judged = a.get("judged_traces")
        ok = (life["dropped"] == 0 and judged is not None and judged == round(life["sampled"])
              and store.get("sampled_without_judge_row") == 0)
        add("every sampled request judged, nothing dropped",
            "judged = sampled, dropped = 0",
            f"sampled {_n(life['sampled'])}, judged {_n(judged)} ({_n(a.get('judge_failed_traces'))} as judge "
            f"errors), dropped {_n(life['dropped'])}, sampled rows without a judge row "
            f"{_n(store.get('sampled_without_judge_row'))}", ok)
    for b in sorted(blocks, key=lambda b: -b["rate"]):
        d = b["derived"]
        for q in ("p50", "p99"):
            a_off, a_on = d.get(f"added_ttft_{q}_ms_{OFF}"), d.get(f"added_ttft_{q}_ms_{ON}")
            if a_off is None or a_on is None:
                continue
            add(f"added TTFT {q} @{b['rate']:.0f} req/s, evaluation on vs off",
                "not worse by more than the noise",
                f"{a_off:.2f} -> {a_on:.2f} ms (change {d[f'change_{q}_ms']:.2f}, "
                f"eval-off pair noise {d[f'noise_{q}_ms']:.2f} ms)", bool(d.get(f"within_noise_{q}")))
    if main:
        for mode in (ON, OFF):
            c = main["cells"].get(mode, {})
            ok = c.get("errors") == 0 and c.get("ttft_p99_ms", math.inf) <= KEEPS_UP_TTFT_P99_MS
            add(f"host keeps up with {main['rate']:.0f} req/s through the {mode} gateway (informative)",
                f"no errors, TTFT p99 <= {KEEPS_UP_TTFT_P99_MS:.0f} ms",
                f"{_fmt(c.get('rps'))} req/s done, TTFT p99 {_fmt(c.get('ttft_p99_ms'), 1)} ms, "
                f"errors {c.get('errors')}; the rest of the host used {_fmt(c.get('rest_cores'), 2)} cores", ok)
    cost = [r for r in result.get("cost", []) if r["measured"]]
    if cost:
        r = cost[0]
        add(f"cost per 1,000 evaluations, {r['judge_price']}", "reported (no goal)",
            f"${r['cost_per_1000']:.4f} ({r['tokens_per_eval']:.0f} judge tokens per evaluation)", None)
    sam = result.get("sampler") or []
    if sam:
        inside = sum(r["inside"] for r in sam)
        add("sampling accuracy, Sampler alone (random and sequential ids; "
            + ", ".join(f"{r:g}" for r in sorted({r['rate'] for r in sam})) + f"; n={sam[0]['n']:,})",
            "every observed rate inside its binomial 99% interval", f"{inside} of {len(sam)} inside",
            inside == len(sam))
    if life:
        s = result.get("sampling_total")
        if s:
            add("sampling accuracy, gateway under load (reason=random / requests)",
                "inside the binomial 99% interval",
                f"{100 * s['observed_rate']:.2f}% of {s['n']:,} [{100 * s['interval_99'][0]:.2f}%, "
                f"{100 * s['interval_99'][1]:.2f}%]", s["inside"])
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: "–"}[r["pass"]]
        lines.append(f"| {r['target']} | {r['goal']} | {r['measured']} | {verdict} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    parts: list[str] = []
    parts += ["#### Which rates the host keeps up with (probe segments and the blocks' pooled cells)", "",
              probe_table(ladder(result)), ""]
    for b in sorted(result["blocks"], key=lambda b: -b["rate"]):
        parts += [f"#### {b['rate']:.0f} requests/s offered ({b['rounds']} rounds, {b['segment_s']:.0f} s per "
                  f"segment, each cell pooled over its segments)", "", cells_table(b), "",
                  derived_table(b, float(result.get("args", {}).get("sample_rate") or 0.05)), ""]
    parts += ["#### Eval pipeline (eval-on gateway, per block)", "",
              pipeline_table(result["blocks"], result.get("store")), ""]
    if result.get("cost"):
        parts += ["#### Judge cost", "", cost_table(result["cost"], result["evals_per_day_10x"]), ""]
    if result.get("sampler"):
        parts += ["#### Sampler alone", "", sampler_table(result["sampler"]), ""]
    parts += ["#### Targets", "", targets_table(result["targets"])]
    for note in result.get("notes", []):
        parts.append(f"\nNote: {note}")
    return "\n".join(parts)
