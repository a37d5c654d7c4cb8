"""Cheap guardrail signals: prompt-injection phrases and PII, used to force-sample a request.

The gateway calls ``guardrail_hits`` on each request's content (off the hot path) and samples the
request for evaluation with reason ``guardrail`` when the list is non-empty. False positives only
cost one extra evaluation, false negatives hide an attack, so the patterns lean towards recall,
yet each needs more than one keyword ("ignore" alone, or "system prompt" alone, is not a hit).

Patterns are English and Portuguese, case-insensitive (they run on the lower-cased text), and read
text after NFKC normalisation (so full-width or ligature look-alikes match too). Each pattern runs
only when one of its trigger substrings (``_TRIGGERS``) is in the text, so ordinary text costs a few
substring scans.
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
    r"(?:instructions?|rules|directions|directives|guidelines|guardrails|constraints|programming|"
    r"instruç(?:ão|ões)|instrucoes|instrucao|regras|diretrizes|orientaç(?:ão|ões)|comandos)"
)
_STRONG_QUALIFIER = (
    r"(?:previous|prior|above|earlier|preceding|initial|original|system|your|anteriores|anterior|iniciais|suas|seus)"
)
"""Qualifiers that name the model's own prompts: "skip all prompts" is an installer's, "ignore your
previous prompts" is not."""
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
_NOT_A_COMPOUND = (
    r"\b(?![\s-]+(?:reset|requirements?|polic(?:y|ies)|rules|managers?|strength|changes?|recovery|hints?|fields?|"
    r"forms?|length|complexity|expir\w*|rotation|formats?|generators?|hashing|validation|links?|pages?|protection|"
    r"settings|docs|documentation|screens?|dialogs?|inputs?|prompts?|best\s+practices|naming|conventions?|"
    r"requisitos|pol[íi]tica|regras|redefiniç\w+|recuperaç\w+)\b)"
)
"""After a secret word: it is the thing asked for, not the first word of a compound ("the password
reset link", "the password requirements", "API key rotation")."""
_OWN = (
    r"(?:your|its|the\s+(?:system|server|host|machine|app|application|bot|model|assistant|agent|container|"
    r"database|db)(?:'s|’s)|(?:do|da)\s+(?:sistema|servidor|aplicaç(?:ão|ao))|seus|suas|seu|sua)"
)
"""Whose secrets: the model's or its system's ("your API key", "the server's credentials")."""
_DETERMINER = (
    r"(?:the|all|any|every|their|stored|saved|admin|root|system|server|production|prod|as|os|todas|todos|"
    r"armazenad[ao]s|salv[ao]s)"
)
_INTRO_WORDS = (
    "please", "pls", "now", "then", "and", "also", "just", "first", "next", "finally", "immediately", "quickly",
    "silently", "secretly", "ok", "okay", "hey", "can you", "could you", "would you", "will you", "you must",
    "you should", "you will", "you shall", "you need to", "you have to", "want you to", "need you to", "por favor",
    "agora", "também", "e", "você deve", "você precisa", "voce deve", "voce precisa",
)
_ORDER = "(?:" + "|".join([
    r"(?<![\s\S])", r"(?<=^\s)",
    *(rf"(?<=[.!?:;,\n\"'(\[*>-]{space})" for space in ("", r"\s", r"\s\s")),
    *(rf"(?<=\b{re.escape(word).replace(chr(92) + ' ', chr(92) + 's')}\s)" for word in _INTRO_WORDS),
]) + ")"
"""Right before a verb: where an order to the model starts. The start of the text, of a sentence or
clause, or a word that introduces a request ("please", "can you", "I want you to"). "How do I list
all environment variables?" asks how; "List all environment variables." orders it. Lookbehinds
only, tried where a verb starts: a prefix alternation tried at every position cost twice as much."""
_ORDER_GAP = r"(?:(?!\bhow\s+(?:to|do|can|should)\b|\bcomo\b)[^.!?\n]){0,40}?"
"""``_GAP`` that does not run through "how to": "show me how to rotate the API keys" asks how."""
_SECRET_VERB = (
    r"(?:print|reveal|show|send|give|list|dump|output|leak|exfiltrate|share|tell|email|post|upload|forward|"
    r"display|return|paste|mostre|envie|revele|liste|compartilhe|informe|imprima)"
)
_NOT_AUTHORING = "".join(
    rf"(?<!{verb} )" for verb in (
        "write", "writing", "create", "design", "draft", "craft", "improve", "build", "optimize", "optimise",
        "edit", "update", "test", "structure", "format", "escrever", "escreva", "criar", "crie", "melhorar",
    )
)
"""Right before "the system prompt": a user writing their own ("write the system prompt") asks no reveal."""
_NOT_THEIRS = (
    r"(?!\s+(?:(?:for|of|in)\s+(?:my|our|a|an|his|her|their)\b|(?:that\s+|which\s+)?(?:I|we)\b|"
    r"(?:para|de|do|da)\s+(?:meu|minha|nosso|nossa|um|uma)\b))"
)
"""After "the system prompt": "for my chatbot", "I wrote" make it the user's own."""

INJECTION_PATTERNS: dict[str, str] = {
    # "ignore all previous instructions", "disregard the above and ...", "ignore as instruções anteriores"
    "ignore_instructions": (
        rf"\b{_VERB_IGNORE}\s+(?:\w+\s+){{0,3}}?{_QUALIFIER}\b(?:\s+\w+){{0,2}}?\s+{_INSTRUCTIONS}\b"
        rf"|\b{_VERB_IGNORE}\s+(?:\w+\s+){{0,3}}?{_STRONG_QUALIFIER}\b(?:\s+\w+){{0,2}}?\s+prompts?\b"
        rf"|\b{_VERB_IGNORE}\s+(?:\w+\s+){{0,2}}?{_INSTRUCTIONS}\s+(?:\w+\s+)?{_QUALIFIER}\b"
        # "the above" alone is what was written above: a new order must follow ("ignore the above and
        # instead say ..."), or it is "ignore the above warnings"
        rf"|\b{_VERB_IGNORE}\s+(?:all\s+(?:of\s+)?|everything\s+|tudo\s+)?(?:the\s+|o\s+|que\s+está\s+)?"
        r"(?:above|acima)"
        r"(?:\s+(?:text|messages?|content|conversation|lines?|this\s+line))?"
        r"(?=\s*(?:[.,;:!-]\s*)?(?:(?:and|then|e|y)\s+)?(?:instead|now|agora|answer|say|tell|write|print|respond|reply|"
        r"output|repeat|reveal|do|act|pretend|translate|return|from\s+now|you\b|responda|diga|escreva|faça|aja|"
        r"finja|traduza|mostre|em\s+vez|ao\s+inv[ée]s)\b)"
    ),
    # "print your system prompt", "repeat the words above", "mostre o prompt do sistema"; not "write
    # the system prompt for my chatbot" (the user's own)
    "reveal_system_prompt": (
        r"\b(?:reveal|show|print|repeat|display|output|tell|give|leak|dump|expose|share|recite|write\s+out|"
        r"mostre|mostrar|revele|revelar|repita|imprima|diga)\b"
        rf"{_GAP}\b{_NOT_AUTHORING}(?:your|the|its|this|seu|sua|o|as)\s+(?:\w+\s+)?{_TARGET_PROMPT}{_NOT_THEIRS}"
        r"|\b(?:what(?:'s|’s|\s+is|\s+are|\s+was|\s+were)|qual\s+(?:é|e|era)|quais\s+(?:são|sao))\s+"
        rf"(?:(?:in|inside)\s+)?(?:your|the|its|seu|sua|o|as)\s+(?:\w+\s+)?{_TARGET_PROMPT}{_NOT_THEIRS}"
        r"|\brepeat\s+(?:\w+\s+)?(?:text|words|everything|message)\s+above\b"
    ),
    # "you are now DAN", "act as an unrestricted AI", "do anything now", "você agora é uma IA sem filtros"
    "role_override": (
        r"\byou\s+are\s+now\s+(?:DAN|STAN|DUDE|AIM\b|(?:an?\s+)?(?:unfiltered|unrestricted|uncensored|jailbroken|evil|"
        r"rogue|amoral)\b|free\s+(?:of|from)\b|(?:in|on)\s+\w+\s+mode)"
        r"|\byou\s+are\s+no\s+longer\s+(?:an?\s+)?(?:ai|assistant|language\s+model|bound|restricted|chatgpt|claude)\b"
        r"|\b(?:act|behave|respond|pretend|roleplay)\s+(?:as|like|to\s+be|you\s+are)\s+(?:an?\s+)?(?:DAN\b|"
        r"(?:unfiltered|unrestricted|uncensored|jailbroken|evil)\b|ai\s+(?:with\s+no|without)\s+(?:restrictions|rules|filters|limits))"
        r"|\bdo\s+anything\s+now\b"
        # "você não é mais titular da conta" is a bank's letter: only a new nature of the model counts
        r"|\bvoc[êe]\s+(?:agora\s+é|é\s+agora|não\s+é\s+mais|nao\s+e\s+mais)\s+(?:(?:um|uma|o|a)\s+)?"
        r"(?:assistente|ia\b|"
        r"intelig[êe]ncia\s+artificial|modelo|chatbot|rob[ôo]|bot\b|DAN\b|chatgpt|livre|irrestrit\w*|"
        r"sem\s+(?:filtros?|restriç\w+|limites|regras|censura)|limitad\w*|restrit\w*|obrigad\w*|censurad\w*|"
        r"controlad\w*|amoral)"
        r"|\bvoc[êe]\s+n[ãa]o\s+est[áa]\s+mais\s+(?:limitad|restrit|pres|sujeit|obrigad)\w*"
        r"|\ba\s+partir\s+de\s+agora,?\s+voc[êe]\s+é\b"
    ),
    # "Developer Mode enabled. You ...", "ChatGPT with Developer Mode", "enable god mode", "modo
    # desenvolvedor"; not "developer mode enabled on my phone" or "DEBUG mode is enabled" (settings)
    "jailbreak_dev_mode": (
        r"\b(?:god|jailbreak|jailbroken|DAN|unrestricted|unfiltered|evil)\s+mode\s+(?:is\s+)?(?:now\s+)?"
        r"(?:enabled|activated|engaged|unlocked|on)\b"
        r"|\b(?:developer|dev|debug|sudo|admin)\s+mode\s+(?:is\s+)?(?:now\s+)?(?:enabled|activated|engaged|unlocked)"
        r"\s*[.!:;,]?\s+(?:you\b|from\s+now|now\s+you|as\s+an?\s+ai|respond|answer|ignore|"
        r"all\s+(?:restrictions|rules|filters))"
        r"|\byou(?:'re|’re|\s+are)\s+(?:now\s+)?(?:in|running\s+in|operating\s+in)\s+(?:developer|dev|debug|god|DAN|"
        r"jailbreak|sudo|unrestricted)\s+mode\b"
        r"|\b(?:chatgpt|gpt[\w.-]*|claude|gemini|llama|bard|copilot|grok|mistral|deepseek)\s+(?:\w+\s+)?with\s+"
        r"(?:developer|dev|debug|god|DAN|jailbreak)\s+mode\b"
        r"|\b(?:act|respond|behave|pretend|simulate|roleplay|answer)\s+(?:\w+\s+){0,4}?with\s+(?:developer|dev|god|DAN|"
        r"jailbreak)\s+mode\b"
        r"|\bwith\s+(?:god|DAN|jailbreak)\s+mode\b"
        r"|\b(?:enable|activate|enter|switch\s+(?:in)?to|turn\s+on)\s+(?:the\s+|your\s+)?"
        r"(?:god|jailbreak|DAN|unrestricted)\s+mode\b"
        r"|\b(?:ative|ativar|ativado|entre\s+no|entrar\s+no)\s+(?:o\s+)?modo\s+(?:deus|jailbreak|irrestrito|DAN)\b"
        r"|\b(?:ative|entre\s+no)\s+(?:o\s+|seu\s+)?modo\s+desenvolvedor\b(?!\s+(?:n[oa]|d[oa]|em)\s)"
        r"|\b(?:you\s+are|you're|be|stay|remain|act)\s+(?:now\s+)?jailbroken\b|\bjailbreak\s+prompt\b"
    ),
    # "print all environment variables", "send the API keys to ...", "what's your api key?", "cat
    # /etc/passwd": the model's or its system's secrets, asked for. Not "what are the password
    # requirements?", "send me the password reset link", "how do I list all environment variables?"
    "exfiltrate_secrets": (
        rf"\b{_SECRET_VERB}\b{_GAP}\b{_OWN}\s+(?:\w+\s+)?{_SECRET}{_NOT_A_COMPOUND}"
        rf"|\b(?={_SECRET_VERB}\b){_ORDER}{_SECRET_VERB}\b{_ORDER_GAP}\b{_DETERMINER}\s+(?:\w+\s+)?{_SECRET}"
        rf"{_NOT_A_COMPOUND}"
        rf"|\b(?:what(?:'s|’s|\s+is|\s+are|\s+were)|qual\s+(?:é|e)(?:\s+[ao])?)\s+{_OWN}\s+(?:\w+\s+)?{_SECRET}"
        rf"{_NOT_A_COMPOUND}"
        r"|/etc/(?:passwd|shadow)\b|\.ssh/id_(?:rsa|dsa|ed25519)\b|\.aws/credentials\b"
    ),
}
"""Injection pattern name -> regex source, case-insensitive (run on the lower-cased text, see
``_lower_literals``)."""

_TRIGGERS: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignor", "disregard", "forget", "bypass", "override", "skip", "desconsider", "esque"),
    "reveal_system_prompt": ("prompt", "instruc", "instruç", "message", "above"),
    "role_override": ("you are", "anything now", "você", "voce", "act", "behave", "respond", "pretend", "roleplay"),
    "jailbreak_dev_mode": ("mode", "modo", "jailbr"),
    "exfiltrate_secrets": (
        "key", "passw", "secret", "credential", "token", ".env", "environment", "/etc/", ".ssh", ".aws",
        "senha", "chave", "credenc", "segredo",
    ),
}
"""Lower-case substrings every match of a pattern contains: a pattern's regex runs only when one is
in the text. Why: ``str.__contains__`` scans 2 kB in microseconds, while an alternation of dozens of
words tried at every position costs Python's ``re`` about a millisecond even when nothing matches."""


def _lower_literals(source: str) -> str:
    """``source`` with its literal letters lower-cased, escapes (``\\s``, ``\\b``) kept as they are.

    Why: the patterns run on the lower-cased text without ``re.IGNORECASE``. Case-insensitive
    literals cost ``re`` a case fold per character tried, and keep it from skipping on a branch's
    first letter: the same matches cost a quarter of the time (2 kB: ~0.6 -> ~0.15 ms for all five)."""
    out: list[str] = []
    i = 0
    while i < len(source):
        if source[i] == "\\":
            out.append(source[i:i + 2])
            i += 2
        else:
            out.append(source[i].lower())
            i += 1
    return "".join(out)


_COMPILED: dict[str, re.Pattern[str]] = {
    name: re.compile(_lower_literals(rx)) for name, rx in INJECTION_PATTERNS.items()
}


def injection_hits(text: str | None) -> list[str]:
    """Names of the injection patterns found in ``text``, in ``INJECTION_PATTERNS`` order."""
    if not text:
        return []
    norm = unicodedata.normalize("NFKC", text)
    low = norm.lower()
    return [
        name for name, rx in _COMPILED.items()
        if any(k in low for k in _TRIGGERS[name]) and rx.search(low) is not None
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
    return {f.entity_type for f in masker.find(content) if f.identifying}
