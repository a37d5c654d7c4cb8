"""PII masking benchmark: detection quality on the test corpus, and masking cost per 2,000 characters.

Quality: entity-level precision, recall and F1 per placeholder type on ``tests/data/pii_corpus.jsonl``
(a gold value counts as found when a predicted span of the same type covers it; a predicted span
covering no gold value of its type is a false positive). The same scoring as the unit test.

Cost: ``PiiMasker.mask(text, 2000)`` on two workloads of 2,000-character texts, single-threaded,
as the gateway's background thread runs it:

- ``pii-dense``: corpus sentences shuffled and joined (about 25 identifiers or number-like decoys per
  text: a worst case for the phone matcher);
- ``prose``: plain English and Portuguese answer text with a few numbers and one e-mail.

It also times ``injection_hits`` and ``guardrail_hits`` and the one-off ``PiiMasker()`` build.

    .venv/bin/python benchmarks/pii_bench.py               # ~30 s; prints markdown, writes the JSON
    .venv/bin/python benchmarks/pii_bench.py --texts 50    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"

PROSE = (
    "The refund policy allows returns within 30 days of delivery, provided the item is unused. "
    "Para solicitar o reembolso, acesse a área do cliente e escolha o pedido desejado. "
    "In most cases the amount is credited within 5 to 7 business days, depending on your bank. "
    "If you have questions, the support team answers on weekdays from 9 to 18. "
    "Observação: pedidos feitos em promoções seguem as mesmas regras de devolução. "
    "You asked whether the model can summarise long contracts; it can, in sections of about 4 pages. "
)


def load_corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(masker: Any, cases: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for case in cases:
        text = case["text"]
        predicted = masker.find(text)
        matched = set()
        for gold in case["entities"]:
            start = text.index(gold["value"])
            end = start + len(gold["value"])
            hits = [p for p in predicted if p.entity_type == gold["type"] and p.start <= start and p.end >= end]
            if hits:
                tp[gold["type"]] += 1
                matched.update(hits)
            else:
                fn[gold["type"]] += 1
        fp.update(p.entity_type for p in predicted if p not in matched)
    return tp, fp, fn


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def make_texts(kind: str, n: int, cases: list[dict[str, Any]], rng: random.Random, size: int = 2000) -> list[str]:
    texts = []
    for _ in range(n):
        parts: list[str] = []
        length = 0
        while length < size:
            if kind == "prose":
                piece = PROSE if rng.random() > 0.2 else "Write to ana.souza@example.com if needed. "
            else:
                piece = rng.choice(cases)["text"] + " "
            parts.append(piece)
            length += len(piece)
        texts.append("".join(parts)[:size])
    return texts


def timings_ms(fn: Any, items: list[Any]) -> list[float]:
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PII masking benchmark (see docs/pii.md)")
    ap.add_argument("--texts", type=int, default=300, help="2,000-char texts per workload")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pii-latest.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    from infersight.evaluation.guardrails import guardrail_hits, injection_hits
    from infersight.evaluation.pii import PiiMasker

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    masker = PiiMasker()
    build_s = time.perf_counter() - t0

    cases = load_corpus()
    tp, fp, fn = score(masker, cases)
    types = sorted(set(tp) | set(fp) | set(fn))
    quality: dict[str, Any] = {}
    print(f"Corpus: {len(cases)} texts, {sum(len(c['entities']) for c in cases)} gold entities, "
          f"{sum(1 for c in cases if not c['entities'])} texts without PII\n")
    print("| type | gold | TP | FP | FN | precision | recall | F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in [*types, "overall"]:
        a, b, c = (tp[t], fp[t], fn[t]) if t != "overall" else (sum(tp.values()), sum(fp.values()), sum(fn.values()))
        p, r, f = prf(a, b, c)
        quality[t] = {"gold": a + c, "tp": a, "fp": b, "fn": c, "precision": p, "recall": r, "f1": f}
        name = f"**{t}**" if t == "overall" else t
        print(f"| {name} | {a + c} | {a} | {b} | {c} | {p:.3f} | {r:.3f} | {f:.3f} |")

    rng = random.Random(args.seed)
    perf: dict[str, Any] = {}
    print("\n| workload | texts | texts/s | mask p50 ms | mask p99 ms | mask mean ms | guardrail_hits p50 ms | injection_hits p50 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("pii-dense", "prose"):
        texts = make_texts(kind, args.texts, cases, rng)
        for text in texts[:10]:
            masker.mask(text)  # warm caches (compiled patterns, phone metadata)
        t0 = time.perf_counter()
        mask_ms = timings_ms(lambda s: masker.mask(s, 2000), texts)
        wall = time.perf_counter() - t0
        masked = [masker.mask(s, 2000) for s in texts[:50]]
        guard_ms = timings_ms(lambda m: guardrail_hits(m, m, masker), masked)
        inj_ms = timings_ms(injection_hits, texts)
        perf[kind] = {
            "texts": len(texts), "chars_per_text": 2000, "texts_per_s": len(texts) / wall,
            "mask_ms_p50": pct(mask_ms, 50), "mask_ms_p99": pct(mask_ms, 99), "mask_ms_mean": statistics.fmean(mask_ms),
            "guardrail_hits_on_masked_ms_p50": pct(guard_ms, 50), "injection_hits_ms_p50": pct(inj_ms, 50),
            "placeholders_per_text": statistics.fmean(sum(m.entities.values()) for m in masked),
        }
        r = perf[kind]
        print(f"| {kind} | {r['texts']} | {r['texts_per_s']:.0f} | {r['mask_ms_p50']:.2f} | {r['mask_ms_p99']:.2f} | "
              f"{r['mask_ms_mean']:.2f} | {r['guardrail_hits_on_masked_ms_p50']:.3f} | {r['injection_hits_ms_p50']:.3f} |")
    print(f"\nOne-off costs: import {import_s:.2f} s, PiiMasker() build + warm-up {build_s * 1000:.0f} ms. "
          f"Machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}.")

    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "python": platform.python_version()},
        "args": vars(args),
        "corpus": {"texts": len(cases), "gold_entities": sum(len(c["entities"]) for c in cases)},
        "quality": quality,
        "performance": perf,
        "one_off": {"import_s": import_s, "build_ms": build_s * 1000},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
