"""Fixed constraints for the structured-output tests: 20 JSON schemas, 10 regexes, one EBNF grammar.

Schemas bound every string and array so a small model finishes well within the token budget (a
free integer appears only where SmolLM2 stops it: greedy decoding can repeat a digit forever).
`OUTLINES_REFUSES` are the schemas whose keywords outlines-core cannot enforce (numeric bounds):
with the outlines backend they must fail with an error naming the backend and the keyword.
"""
from __future__ import annotations

from jackfield.sdk.grammar import Grammar

class OpenGrammar(Grammar):
    """Allows every token in its mask and never terminates; accept_token refuses `refuse`."""

    def __init__(self, refuse=frozenset()):
        self.refuse = refuse

    def accept_token(self, token_id):
        return token_id not in self.refuse

    def fill_bitmask(self, bitmask, row):
        bitmask[row] = -1

    def is_terminated(self):
        return False

    def rollback(self, num_tokens):
        pass

    def copy(self):
        return OpenGrammar(self.refuse)


S = {"type": "string", "maxLength": 8}
INT = {"type": "integer"}


def obj(required: list[str] | None = None, **props) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


SCHEMAS = {
    "flat": obj(name=S, member={"type": "boolean"}),
    "nested": obj(person=obj(name=S, address=obj(city=S, zip={"type": "string", "pattern": "^[0-9]{5}$"}))),
    "int_array": {"type": "array", "items": INT, "minItems": 1, "maxItems": 3},
    "enum_pair": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 2},
    "enum": {"enum": ["red", "green", "blue"]},
    "bounded_int": {"type": "integer", "minimum": 1, "maximum": 9},
    "bounded_number": obj(score={"type": "integer", "minimum": 0, "maximum": 100},
                          weight={"type": "number", "minimum": 0, "maximum": 100}),
    "optional": obj(["a", "c"], a=S, b={"enum": [1, 2, 3]}, c={"type": "boolean"}),
    "pattern": obj(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}),
    "refs": {**obj(start={"$ref": "#/$defs/point"}, end={"$ref": "#/$defs/point"}),
             "$defs": {"point": obj(x=INT, y=INT)}},
    "bool_null": obj(ok={"type": "boolean"}, note={"type": "null"}),
    "any_of": obj(v={"anyOf": [{"type": "boolean"}, {"type": "string", "maxLength": 5}]}),
    "const": obj(kind={"const": "event"}, n=S),
    "object_array": obj(items={"type": "array", "items": obj(id=S, tag={"enum": ["a", "b"]}), "maxItems": 2}),
    "nested_arrays": obj(matrix={"type": "array", "maxItems": 2,
                                 "items": {"type": "array", "items": {"enum": [0, 1]}, "minItems": 1, "maxItems": 2}}),
    "string_lengths": obj(s={"type": "string", "minLength": 2, "maxLength": 6}),
    "long_keys": obj(customer_first_name=S, customer_last_name=S, shipping_address_city=S),
    "exclusive_bounds": obj(count={"type": "integer", "exclusiveMinimum": 0, "maximum": 100}),
    "type_list": obj(v={"type": ["string", "null"], "maxLength": 4}),
    "no_extra": {**obj(level={"enum": [1, 2, 3]}), "additionalProperties": False},
}
OUTLINES_REFUSES = {"bounded_int": "minimum", "bounded_number": "minimum", "exclusive_bounds": "exclusiveMinimum"}

REGEXES = [
    r"(yes|no)",
    r"[0-9]{3}-[0-9]{4}",
    r"[a-z]{1,8}@[a-z]{1,8}\.com",
    r"(Mon|Tues|Wednes)day",
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"[A-Z][a-z]{2,6} [A-Z][a-z]{2,6}",
    r"(true|false)",
    r"#[0-9a-f]{6}",
    r"(\+|-)?[0-9]{1,3}\.[0-9]{2}",
    r"The answer is (A|B|C|D)\.",
]

ARITHMETIC = ('root ::= expr\n'
              'expr ::= term | term op term\n'
              'term ::= num | "(" expr ")"\n'
              'op ::= "+" | "-" | "*"\n'
              'num ::= [1-9] [0-9]?\n')
