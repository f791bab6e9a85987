"""Weights moved into one allocation after loading (jackfield.loader.compact): the model computes
the same, ties stay tied, and every weight is a view of the new allocation."""
import torch
from torch import nn

from jackfield.loader.compact import pack_weights


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 6)
        self.narrow = nn.Linear(6, 10, bias=False).to(torch.bfloat16)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("codes", torch.arange(12, dtype=torch.int32).view(3, 4))
        self.register_buffer("cache", torch.ones(3), persistent=False)

    def forward(self, ids):
        h = self.proj(self.embed(ids))
        return self.narrow(h.bfloat16()).float() + self.head(self.embed(ids))


def test_packed_weights_compute_the_same_and_stay_tied():
    torch.manual_seed(0)
    model = Tiny()
    ids = torch.tensor([1, 2, 3])
    before = model(ids)
    cache = model.cache
    flat = pack_weights(model)
    assert torch.equal(model(ids), before)
    assert model.head.weight is model.embed.weight
    assert isinstance(model.proj.weight, nn.Parameter) and model.narrow.weight.dtype == torch.bfloat16
    assert torch.equal(model.codes, torch.arange(12, dtype=torch.int32).view(3, 4))
    base = flat.untyped_storage().data_ptr()
    for t in [*model.parameters(), model.codes]:
        assert t.untyped_storage().data_ptr() == base and (t.data_ptr() - base) % 256 == 0
    assert model.cache is cache  # non-persistent buffers (caches) stay where they are
