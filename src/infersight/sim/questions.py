"""A small bank of factual questions with known right and wrong answers.

The simulator answers from this bank so that answer quality is *known*: the traffic generator asks
these questions, the sim answers right with the model's ``p_correct``, and quality evaluators can
be checked against the truth (``Question.correct``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One factual question; ``wrong`` holds plausible but incorrect answers."""

    id: str
    question: str
    correct: str
    wrong: tuple[str, ...]
    topic: str


def _q(qid: str, topic: str, question: str, correct: str, *wrong: str) -> Question:
    return Question(id=qid, question=question, correct=correct, wrong=tuple(wrong), topic=topic)


QUESTION_BANK: list[Question] = [
    _q("geo-01", "geography", "What is the capital of France?", "Paris", "Lyon", "Marseille"),
    _q("geo-02", "geography", "What is the capital of Australia?", "Canberra", "Sydney", "Melbourne"),
    _q("geo-03", "geography", "What is the capital of Canada?", "Ottawa", "Toronto", "Montreal"),
    _q("geo-04", "geography", "Which is the longest river in South America?", "the Amazon",
       "the Orinoco", "the Parana"),
    _q("geo-05", "geography", "What is the largest ocean on Earth?", "the Pacific Ocean",
       "the Atlantic Ocean", "the Indian Ocean"),
    _q("geo-06", "geography", "What is the highest mountain above sea level?", "Mount Everest",
       "K2", "Kangchenjunga"),
    _q("geo-07", "geography", "On which continent is the Sahara desert?", "Africa", "Asia"),
    _q("geo-08", "geography", "What is the capital of Japan?", "Tokyo", "Kyoto", "Osaka"),
    _q("sci-01", "science", "What is the chemical symbol for gold?", "Au", "Ag", "Gd"),
    _q("sci-02", "science", "How many planets are in the Solar System?", "eight", "nine", "seven"),
    _q("sci-03", "science", "What is the boiling point of water at sea level in Celsius?",
       "100 degrees", "90 degrees", "212 degrees"),
    _q("sci-04", "science", "Which planet is known as the Red Planet?", "Mars", "Jupiter", "Venus"),
    _q("sci-05", "science", "What gas do plants absorb from the air for photosynthesis?",
       "carbon dioxide", "oxygen", "nitrogen"),
    _q("sci-06", "science", "What is the atomic number of carbon?", "6", "12", "8"),
    _q("sci-07", "science", "What is the largest planet in the Solar System?", "Jupiter",
       "Saturn", "Neptune"),
    _q("sci-08", "science", "What particle has a negative electric charge?", "the electron",
       "the proton", "the neutron"),
    _q("sci-09", "science", "What is the speed of light in vacuum, approximately, in km/s?",
       "about 300,000 km/s", "about 150,000 km/s", "about 30,000 km/s"),
    _q("his-01", "history", "In which year did the Second World War end?", "1945", "1944", "1946"),
    _q("his-02", "history", "Who was the first President of the United States?",
       "George Washington", "Thomas Jefferson", "John Adams"),
    _q("his-03", "history", "In which year did the Berlin Wall fall?", "1989", "1991", "1987"),
    _q("his-04", "history", "Which empire built Machu Picchu?", "the Inca Empire",
       "the Aztec Empire", "the Maya civilization"),
    _q("his-05", "history", "In which year did humans first land on the Moon?", "1969", "1968",
       "1972"),
    _q("lit-01", "literature", "Who wrote the play Romeo and Juliet?", "William Shakespeare",
       "Christopher Marlowe", "Ben Jonson"),
    _q("lit-02", "literature", "Who wrote the novel Nineteen Eighty-Four?", "George Orwell",
       "Aldous Huxley", "Ray Bradbury"),
    _q("lit-03", "literature", "Who wrote Don Quixote?", "Miguel de Cervantes", "Lope de Vega"),
    _q("lit-04", "literature", "Who wrote Pride and Prejudice?", "Jane Austen", "Charlotte Bronte",
       "Mary Shelley"),
    _q("math-01", "math", "What is the square root of 144?", "12", "14", "11"),
    _q("math-02", "math", "What is 7 multiplied by 8?", "56", "54", "64"),
    _q("math-03", "math", "How many degrees are in the interior angles of a triangle?",
       "180 degrees", "360 degrees", "90 degrees"),
    _q("math-04", "math", "What is the smallest prime number?", "2", "1", "3"),
    _q("cs-01", "computing", "Which HTTP status code means Too Many Requests?", "429", "503",
       "403"),
    _q("cs-02", "computing", "How many bits are in a byte?", "eight", "sixteen", "four"),
    _q("cs-03", "computing", "Who is credited with inventing the World Wide Web?",
       "Tim Berners-Lee", "Vint Cerf", "Bill Gates"),
    _q("cs-04", "computing", "What does CPU stand for?", "central processing unit",
       "computer power unit", "central program utility"),
    _q("art-01", "art", "Who painted the Mona Lisa?", "Leonardo da Vinci", "Michelangelo",
       "Raphael"),
    _q("art-02", "art", "Who composed the Fifth Symphony that opens with four famous notes?",
       "Ludwig van Beethoven", "Wolfgang Amadeus Mozart", "Johann Sebastian Bach"),
]

QUESTIONS_BY_ID: dict[str, Question] = {q.id: q for q in QUESTION_BANK}
