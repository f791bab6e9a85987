"""Prompts for `jackfield bench spec`: workloads whose answers repeat their input (where speculation
pays), and plain chat for contrast.

* rewrite: a Python function and one change to make; the answer is the function again.
* quotes: a passage and a request to summarize it quoting its sentences verbatim.
* chat: short open questions (little to copy).

Prompts are numbered ("Task 7."), so that no two of a run are the same text: identical prompts
would have identical greedy answers, which the n-gram decoder's trie over recent requests drafts
perfectly, overstating what speculation gains on real traffic.
"""
from __future__ import annotations

FUNCTIONS = [
    '''def moving_average(values, window):
    """Return the moving averages of `values` over `window` items."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            averages.append(total / window)
    return averages
''',
    '''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count=1):
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count=1):
        if self.items.get(name, 0) < count:
            raise KeyError(f"not enough {name}")
        self.items[name] -= count
        if self.items[name] == 0:
            del self.items[name]

    def total(self):
        return sum(self.items.values())
''',
    '''def parse_config(lines):
    config = {}
    section = "default"
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            config.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        config.setdefault(section, {})[key.strip()] = value.strip()
    return config
''',
    '''def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        middle = (low + high) // 2
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1
''',
]
CHANGES = ["the function renamed with a `_v2` suffix", "type hints added to the signature",
           "every double quote replaced by a single quote", "one more comment at the top"]
PASSAGES = [
    "The lighthouse stood on the northern cliff for two hundred years. Its keeper climbed the ninety "
    "steps every evening to light the lamp. Ships passing in the night trusted its beam to find the "
    "harbor. When the storm of the century came, the keeper stayed at his post for three days.",
    "Bees communicate through a dance. A forager that finds flowers performs a waggle dance in the "
    "hive. The angle of the dance tells the direction of the flowers relative to the sun. The length "
    "of the waggle tells the distance. Other bees follow the dancer and then fly out to the field.",
    "The city council met on Tuesday to discuss the new bridge. The mayor said the bridge would cut "
    "travel times in half. Several residents worried about the noise during construction. The council "
    "voted to approve the plan and to hold a public hearing in the spring.",
]
QUESTIONS = ["What makes a good breakfast?", "Why is the sky blue?", "How do I learn to play chess?",
             "What is the difference between a virus and a bacterium?", "Give me three tips for sleeping better.",
             "What should I pack for a weekend hike?"]


def texts(workload: str, n: int) -> list[str]:
    return [f"Task {i + 1}. {text}" for i, text in enumerate(_texts(workload, n))]


def _texts(workload: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        if workload == "rewrite":
            code = FUNCTIONS[i % len(FUNCTIONS)]
            out.append(f"Here is a Python snippet:\n```python\n{code}```\nRewrite it with "
                       f"{CHANGES[(i // len(FUNCTIONS)) % len(CHANGES)]}. Output the complete code only.")
        elif workload == "quotes":
            out.append(f"Text: {PASSAGES[i % len(PASSAGES)]}\nSummarize this text, quoting each of its sentences "
                       "verbatim in quotation marks.")
        elif workload == "chat":
            out.append(QUESTIONS[i % len(QUESTIONS)])
        else:
            raise ValueError(f"unknown workload '{workload}' (rewrite, quotes, chat)")
    return out


def prompts(tokenizer, workload: str, n: int) -> list[list[int]]:
    """Token ids of `n` prompts, through the model's chat template when it has one."""
    out = []
    for text in texts(workload, n):
        try:
            ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                                 add_generation_prompt=True), add_special_tokens=False)
        except Exception:  # no chat template
            ids = tokenizer.encode(text)
        out.append(ids)
    return out
