"""Cheap guardrail signals: prompt-injection phrases and PII, used to force-sample a request.

The gateway calls ``guardrail_hits`` on each request's content (off the hot path) and samples the
request for evaluation with reason ``guardrail`` when the list is non-empty. False positives only
cost one extra evaluation, false negatives hide an attack, so the patterns lean towards recall,
yet each needs more than one keyword ("ignore" alone, or "system prompt" alone, is not a hit).

Patterns are English and Portuguese, case-insensitive, and read text after NFKC normalisation (so
full-width or ligature look-alikes match too). Each pattern runs only when one of its trigger
substrings (``_TRIGGERS``) is in the text, so ordinary text costs a few substring scans.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infersight.evaluation.pii import MaskedText, PiiMasker

__all__ = ["INJECTION_PATTERNS", "guardrail_hits", "injection_hits"]

_GAP = r"[^.!?\n]{0,40}?"  # a few words, within one sentence
_VERB_IGNORE = (
    r"(?:ignore|ignora|disregard|forget|bypass|override|skip|desconsidere|desconsiderar|esqueça|esqueca|ignorar)"
)
_QUALIFIER = (
    r"(?:previous|prior|above|earlier|preceding|initial|original|system|safety|all|any|your|every|"
    r"anteriores|anterior|prévias|previas|iniciais|todas|todos|suas|seus)"
)
_INSTRUCTIONS = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints|programming|"
    r"instruç(?:ão|ões)|instrucoes|instrucao|regras|diretrizes|orientaç(?:ão|ões)|comandos)"
)
_TARGET_PROMPT = (
    r"(?:system\s+(?:prompt|message|instructions)|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|"
    r"original\s+(?:prompt|instructions)|developer\s+(?:message|prompt)|pre-?prompt|"
    r"prompt\s+(?:do|de)\s+sistema|instruç(?:ões|ão)\s+(?:do\s+sistema|iniciais|ocultas|originais))"
)
_SECRET = (
    r"(?:api[\s_-]?keys?|passwords?|passwd|secrets?|credentials?|(?:access|auth|bearer|session)[\s_-]?tokens?|"
    r"private[\s_-]?keys?|ssh[\s_-]?keys?|env(?:ironment)?\s+variables?|\.env\b|senhas?|"
    r"chaves?\s+(?:de\s+)?api|credenciais|tokens?\s+de\s+acesso|segredos?)"
)
_DETERMINER = r"(?:your|the|all|any|my|their|its|stored|saved|admin|root|system|seus|suas|seu|sua|as|os|todas|todos)"

INJECTION_PATTERNS: dict[str, str] = {
    # "ignore all previous instructions", "disregard the above", "ignore as instruções anteriores"
    "ignore_instructions": (
        rf"\b{_VERB_IGNORE}\s+(?:\w+\s+){{0,3}}?{_QUALIFIER}\b(?:\s+\w+){{0,2}}?\s+{_INSTRUCTIONS}\b"
        rf"|\b{_VERB_IGNORE}\s+(?:\w+\s+){{0,2}}?{_INSTRUCTIONS}\s+(?:\w+\s+)?{_QUALIFIER}\b"
        rf"|\b{_VERB_IGNORE}\s+(?:all\s+|everything\s+|tudo\s+)?(?:the\s+|o\s+)?(?:above|acima)\b"
    ),
    # "print your system prompt", "repeat the words above", "mostre o prompt do sistema"
    "reveal_system_prompt": (
        r"\b(?:reveal|show|print|repeat|display|output|tell|give|leak|dump|expose|share|recite|write\s+out|"
        r"what(?:'s|\s+is|\s+are|\s+were)|mostre|mostrar|revele|revelar|repita|imprima|diga|qual\s+é|quais\s+são)\b"
        rf"{_GAP}\b(?:your|the|its|this|seu|sua|o|as)\s+(?:\w+\s+)?{_TARGET_PROMPT}"
        r"|\brepeat\s+(?:\w+\s+)?(?:text|words|everything|message)\s+above\b"
    ),
    # "you are now DAN", "act as an unrestricted AI", "do anything now", "você agora é ..."
    "role_override": (
        r"\byou\s+are\s+now\s+(?:DAN|STAN|DUDE|AIM\b|(?:an?\s+)?(?:unfiltered|unrestricted|uncensored|jailbroken|evil|"
        r"rogue|amoral)\b|free\s+(?:of|from)\b|(?:in|on)\s+\w+\s+mode)"
        r"|\byou\s+are\s+no\s+longer\s+(?:an?\s+)?(?:ai|assistant|language\s+model|bound|restricted|chatgpt|claude)\b"
        r"|\b(?:act|behave|respond|pretend|roleplay)\s+(?:as|like|to\s+be|you\s+are)\s+(?:an?\s+)?(?:DAN\b|"
        r"(?:unfiltered|unrestricted|uncensored|jailbroken|evil)\b|ai\s+(?:with\s+no|without)\s+(?:restrictions|rules|filters|limits))"
        r"|\bdo\s+anything\s+now\b"
        r"|\bvocê\s+(?:agora\s+é|não\s+é\s+mais)\b|\ba\s+partir\s+de\s+agora,?\s+você\s+é\b"
    ),
    # "Developer Mode enabled", "with DAN mode", "enable god mode", "modo desenvolvedor"
    "jailbreak_dev_mode": (
        r"\b(?:developer|dev|god|jailbreak|DAN|debug|unrestricted|sudo)\s+mode\s+(?:is\s+)?(?:enabled|activated|engaged|unlocked)\b"
        r"|\bwith\s+(?:developer|dev|god|DAN|jailbreak)\s+mode\b"
        r"|\b(?:enable|activate|enter|switch\s+(?:in)?to|turn\s+on)\s+(?:the\s+)?(?:god|jailbreak|DAN|unrestricted)\s+mode\b"
        r"|\b(?:ative|ativar|ativado|entre\s+no|entrar\s+no)\s+(?:o\s+)?modo\s+(?:desenvolvedor|deus|jailbreak|irrestrito|DAN)\b"
        r"|\b(?:you\s+are|you're|be|stay|remain|act)\s+(?:now\s+)?jailbroken\b|\bjailbreak\s+prompt\b"
    ),
    # "print all environment variables", "send the API keys to ...", "cat /etc/passwd"
    "exfiltrate_secrets": (
        r"\b(?:print|reveal|show|send|give|list|dump|output|leak|exfiltrate|share|tell|email|post|upload|forward|"
        r"display|return|paste|mostre|envie|revele|liste|compartilhe|informe)\b"
        rf"{_GAP}\b{_DETERMINER}\s+(?:\w+\s+)?{_SECRET}"
        rf"|\bwhat(?:'s|\s+is|\s+are)\s+(?:your|the)\s+(?:\w+\s+)?{_SECRET}"
        r"|/etc/(?:passwd|shadow)\b|\.ssh/id_(?:rsa|dsa|ed25519)\b|\.aws/credentials\b"
    ),
}
"""Injection pattern name -> regex source (compiled case-insensitively)."""

_TRIGGERS: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignor", "disregard", "forget", "bypass", "override", "skip", "desconsider", "esque"),
    "reveal_system_prompt": ("prompt", "instruc", "instruç", "message", "above"),
    "role_override": ("you are", "anything now", "você", "act", "behave", "respond", "pretend", "roleplay"),
    "jailbreak_dev_mode": ("mode", "modo", "jailbr"),
    "exfiltrate_secrets": (
        "key", "passw", "secret", "credential", "token", ".env", "environment", "/etc/", ".ssh", ".aws",
        "senha", "chave", "credenc", "segredo",
    ),
}
"""Lower-case substrings every match of a pattern contains: a pattern's regex runs only when one is
in the text. Why: ``str.__contains__`` scans 2 kB in microseconds, while an alternation of dozens of
words tried at every position costs Python's ``re`` about a millisecond even when nothing matches."""

_COMPILED: dict[str, re.Pattern[str]] = {
    name: re.compile(rx, re.IGNORECASE) for name, rx in INJECTION_PATTERNS.items()
}


def injection_hits(text: str | None) -> list[str]:
    """Names of the injection patterns found in ``text``, in ``INJECTION_PATTERNS`` order."""
    if not text:
        return []
    norm = unicodedata.normalize("NFKC", text)
    low = norm.lower()
    return [
        name for name, rx in _COMPILED.items()
        if any(k in low for k in _TRIGGERS[name]) and rx.search(norm) is not None
    ]


def guardrail_hits(
    prompt: str | MaskedText | None,
    completion: str | MaskedText | None,
    masker: PiiMasker | None = None,
) -> list[str]:
    """Guardrail signals for one request, e.g. ``["pii_prompt:EMAIL", "injection:ignore_instructions"]``.

    PII types come first (``pii_prompt:*`` then ``pii_completion:*``, each sorted), then injection
    names. Injection is looked for in the prompt only: it is an attack on the input, and a
    completion that explains an attack is not one. Pass the ``MaskedText`` the gateway already made
    (its placeholder counts are used, no second analysis) or raw text (analysed with ``masker``,
    ``default_masker()`` when None).
    """
    hits: list[str] = []
    for label, content in (("pii_prompt", prompt), ("pii_completion", completion)):
        hits.extend(f"{label}:{t}" for t in sorted(_pii_types(content, masker)))
    prompt_text = prompt if isinstance(prompt, str) or prompt is None else prompt.text
    hits.extend(f"injection:{name}" for name in injection_hits(prompt_text))
    return hits


def _pii_types(content: str | MaskedText | None, masker: PiiMasker | None) -> set[str]:
    if content is None:
        return set()
    if not isinstance(content, str):
        return {t for t, n in content.entities.items() if n > 0}
    if not content:
        return set()
    if masker is None:
        from infersight.evaluation.pii import default_masker  # lazy: presidio takes ~2 s to import

        masker = default_masker()
    return {f.entity_type for f in masker.find(content)}
