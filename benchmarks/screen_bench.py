"""What reading Unicode spaces, dashes and digits costs the gateway's guardrail screen.

    .venv/bin/python benchmarks/screen_bench.py

``screen.screen`` runs on the relay's event loop for every request whose tenant keeps content.
Since 2026-11-23 it first maps Unicode spaces, dashes and digits to ASCII (``checksums.ascii_shadow``)
so that a card written with no-break spaces is seen. This times the screen on the same prompt and
answer in three scripts, with that step and with it replaced by the identity (the baseline, in the
same run, alternating round by round), and prints the median ratio.
"""

from __future__ import annotations

import statistics
import timeit

from infersight.evaluation import screen as screen_module
from infersight.evaluation.checksums import ascii_shadow

TEXTS = {
    "ascii": ("What is the capital of France? My order 12345 was late.", "The capital of France is Paris. " * 12),
    "latin-1": ("Qual é a capital da França? Meu pedido 12345 atrasou.", "A capital da França é Paris. " * 12),
    "cjk": ("フランスの首都はどこですか？注文12345が遅れました。", "フランスの首都はパリです。" * 12),
    "2,000 chars latin-1": ("Olá, você pode me ajudar com a minha conta? " * 45, "Sim, claro. " * 160),
}


def _once(prompt: str, completion: str, n: int) -> float:
    return timeit.timeit(lambda: screen_module.screen(prompt, completion), number=n) / n * 1e6


def _pair(prompt: str, completion: str, n: int = 3000, rounds: int = 9) -> tuple[float, float, float]:
    """Medians of the two, and of their per-round ratio: rounds alternate, so host noise hits both."""
    with_step, baseline, ratios = [], [], []
    for _ in range(rounds):
        a = _once(prompt, completion, n)
        screen_module.ascii_shadow = lambda text: text  # type: ignore[assignment]
        try:
            b = _once(prompt, completion, n)
        finally:
            screen_module.ascii_shadow = ascii_shadow
        with_step.append(a)
        baseline.append(b)
        ratios.append(a / b)
    return statistics.median(with_step), statistics.median(baseline), statistics.median(ratios)


def main() -> None:
    ascii_shadow("\u00a0")  # the table is built once, at the gateway's start
    print("| text | with the Unicode step (us) | baseline (us) | ratio (median of rounds) |")
    print("|---|---|---|---|")
    for name, (prompt, completion) in TEXTS.items():
        with_step, baseline, ratio = _pair(prompt, completion)
        print(f"| {name} | {with_step:.2f} | {baseline:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
