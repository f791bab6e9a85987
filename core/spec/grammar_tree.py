"""Grammar masks over a draft tree (SGLang's traverse_tree): the verify forward samples every node
of a constrained request under the mask its path leaves the grammar in.

The matcher stands after the request's last token (the root). Depth first: fill the node's row,
then for each child whose token that row allows, accept the token, visit the child and roll the
matcher back by one. A child the row forbids can never be accepted (the target's pick at its parent
is drawn under that row), so its subtree's rows stay all-allowed. The matcher ends where it began.
Bitmask rows are int32 words, bit 1 = allowed (jackfield.sdk.grammar's format).
"""
from __future__ import annotations

import torch


def allows(bitmask: torch.Tensor, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token >> 5]) >> (token & 31)) & 1)


def fill_tree_bitmask(grammar, tokens: list[int], parents: list[int], bitmask: torch.Tensor, row0: int) -> None:
    """Rows row0 .. row0 + len(tokens) - 1 of `bitmask` for one request's tree (node 0: the root)."""
    children: dict[int, list[int]] = {}
    for j in range(1, len(tokens)):
        children.setdefault(parents[j], []).append(j)
    bitmask[row0:row0 + len(tokens)] = -1
    _visit(grammar, 0, tokens, children, bitmask, row0)


def _visit(grammar, node: int, tokens: list[int], children: dict, bitmask: torch.Tensor, row0: int) -> None:
    """The matcher stands after `node`'s token: fill its row, visit the children it allows, and
    leave the matcher as it found it (trees are at most a few dozen nodes deep)."""
    if grammar.is_terminated():
        return
    grammar.fill_bitmask(bitmask, row0 + node)
    for child in children.get(node, []):
        if allows(bitmask, row0 + node, tokens[child]) and grammar.accept_token(tokens[child]):
            _visit(grammar, child, tokens, children, bitmask, row0)
            grammar.rollback(1)
