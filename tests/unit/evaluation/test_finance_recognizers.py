"""Checksum and rule checks of the finance recognizers, alone and as presidio recognizers."""

from __future__ import annotations

import pytest

from infersight.evaluation.finance_recognizers import (
    AccountNumberRecognizer,
    CardNumberRecognizer,
    CpfRecognizer,
    UsSsnRecognizer,
    card_brand,
    cpf_check_digits,
    cpf_is_valid,
    iban_is_valid,
    iban_recognizer,
    luhn_is_valid,
    ssn_is_valid,
)


def spans(recognizer, text: str) -> list[tuple[str, float]]:
    """(matched text, score) of what a recognizer keeps, before any threshold."""
    return [(text[r.start:r.end], r.score) for r in recognizer.analyze(text, recognizer.supported_entities)]


# ---- cards

@pytest.mark.parametrize("number", ["4111111111111111", "5555 5555 5555 4444", "3782-822463-10005", "6011000990139424"])
def test_luhn_accepts_test_cards(number: str) -> None:
    assert luhn_is_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "5555555555554445", "378282246310006", ""])
def test_luhn_rejects_one_digit_off(number: str) -> None:
    assert not luhn_is_valid(number)


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4111111111111111", "visa"),
        ("5105105105105100", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("30569309025904", "diners"),
        ("3530111333300000", "jcb"),
        ("6011111111111117", "discover"),
        ("6362970000457013", "maestro"),
    ],
)
def test_card_brand_from_issuer_range(number: str, brand: str) -> None:
    assert card_brand(number) == brand


@pytest.mark.parametrize(
    "number",
    [
        "3782822463100050",  # amex prefix, but 16 digits (amex issues 15)
        "9111111111111111",  # no scheme starts with 9
        "411111111111",  # 12 digits: too short
        "41111111111111111111",  # 20 digits: too long
    ],
)
def test_card_brand_rejects_wrong_range_or_length(number: str) -> None:
    assert card_brand(number) is None


def test_card_recognizer_requires_luhn_and_brand() -> None:
    rec = CardNumberRecognizer()
    text = "a 4111 1111 1111 1111 b 4111-1111-1111-1112 c 9111111111111111 d 3056 9309 0259 04 e 4111-1111 1111-1111"
    assert spans(rec, text) == [("4111 1111 1111 1111", 1.0), ("3056 9309 0259 04", 1.0)]


def test_card_recognizer_ignores_longer_digit_runs() -> None:
    # 20 digits contain a Luhn-valid 16-digit window, but a card is never part of a longer number.
    assert spans(CardNumberRecognizer(), "id 41111111111111110000 end") == []


# ---- CPF

def test_cpf_check_digits_known_value() -> None:
    assert cpf_check_digits("529982247") == "25"
    assert cpf_is_valid("529.982.247-25") and cpf_is_valid("52998224725")


@pytest.mark.parametrize("text", ["529.982.247-26", "529.982.247-35", "5299822472", "529982247250"])
def test_cpf_rejects_wrong_check_digits_and_lengths(text: str) -> None:
    assert not cpf_is_valid(text)


def test_cpf_rejects_repeated_digits_although_checksum_passes() -> None:
    assert cpf_check_digits("111111111") == "11"  # why the explicit rule exists
    assert not cpf_is_valid("111.111.111-11")
    assert not cpf_is_valid("00000000000")


def test_cpf_recognizer_formats() -> None:
    text = "CPF 529.982.247-25, outro 52998224725, errado 529.982.247-26, longo 529982247251"
    assert spans(CpfRecognizer(), text) == [("529.982.247-25", 1.0), ("52998224725", 1.0)]


# ---- SSN

@pytest.mark.parametrize("ssn", ["536-22-8190", "219-09-9999", "078-12-3456", "772 38 1204", "665123456"])
def test_ssn_valid(ssn: str) -> None:
    assert ssn_is_valid(ssn)


@pytest.mark.parametrize(
    "ssn",
    ["000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456", "123-00-4567", "123-45-0000", "111-11-1111",
     "078-05-1120", "53622819"],
)
def test_ssn_invalid_area_group_serial(ssn: str) -> None:
    assert not ssn_is_valid(ssn)


def test_ssn_recognizer_scores_by_format() -> None:
    text = "a 536-22-8190 b 536 22 8190 c 536228190 d 000-12-3456 e 536-22 8190"
    found = dict(spans(UsSsnRecognizer(), text))
    assert found == {"536-22-8190": 0.5, "536 22 8190": 0.3, "536228190": 0.15}


# ---- IBAN

@pytest.mark.parametrize(
    "iban",
    ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
     "BR1800360305000010009795493C1", "PT50000201231234567890154", "NL91ABNA0417164300"],
)
def test_iban_mod97_and_presidio_agree_on_valid(iban: str) -> None:
    assert iban_is_valid(iban)
    assert spans(iban_recognizer(), f"pay to {iban} today") == [(iban, 1.0)]


@pytest.mark.parametrize("iban", ["DE89 3704 0044 0532 0130 01", "GB82WEST12345698765433", "PT50000201231234567890155"])
def test_iban_one_digit_off_is_rejected(iban: str) -> None:
    assert not iban_is_valid(iban)
    assert spans(iban_recognizer(), f"pay to {iban} today") == []


# ---- account numbers

def test_account_recognizer_is_weak_without_context() -> None:
    text = "conta 12345-6 ref 1234-5 date 2024-01-15 total 1.234.567 account 00000000"
    # Only shapes are matched here (score 0.15, under the masking threshold); context comes later.
    assert spans(AccountNumberRecognizer(), text) == [("12345-6", 0.15)]
