"""Our LoRA, rsLoRA and DoRA layers compute what PEFT's do: outputs, gradients, training steps, merge/unmerge."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from llm_tricks.dora import DoRALinear
from llm_tricks.lora import LoRALinear

ATOL = 1e-5
IN, OUT, R, ALPHA = 12, 10, 4, 8


class Holder(nn.Module):
    """A one-layer module so PEFT has a named target."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def make_pair(kind: str, dropout: float = 0.0, bias: bool = True):
    """(ours, peft_layer, peft_params) holding identical weights; B is made non-zero so the update matters."""
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, bias=bias)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=["lin"],
                        use_dora=kind == "dora", use_rslora=kind == "rslora")
    peft_layer = get_peft_model(Holder(copy.deepcopy(base)), config).base_model.model.lin
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_(std=0.3)
    if kind == "dora":
        ours = DoRALinear(copy.deepcopy(base), r=R, lora_alpha=ALPHA, lora_dropout=dropout)
    else:
        ours = LoRALinear(copy.deepcopy(base), r=R, lora_alpha=ALPHA, lora_dropout=dropout,
                          use_rslora=kind == "rslora")
    peft_params = {"lora_A": peft_layer.lora_A["default"].weight, "lora_B": peft_layer.lora_B["default"].weight}
    if kind == "dora":
        peft_params["magnitude"] = peft_layer.lora_magnitude_vector["default"].weight
        # The magnitude is initialised from W0 alone in both; check that before B is changed.
        torch.testing.assert_close(ours.magnitude, peft_params["magnitude"], atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.magnitude, base.weight.norm(dim=1), atol=ATOL, rtol=0)
    with torch.no_grad():
        ours.lora_A.copy_(peft_params["lora_A"])
        ours.lora_B.copy_(peft_params["lora_B"])
    return ours, peft_layer, peft_params


def step_both(ours, peft_layer, peft_params, x, target, seed):
    """One forward/backward on each; returns both outputs (the dropout mask is shared through the seed)."""
    torch.manual_seed(seed)
    out_ours = ours(x)
    torch.manual_seed(seed)
    out_peft = peft_layer(x)
    ((out_ours - target) ** 2).mean().backward()
    ((out_peft - target) ** 2).mean().backward()
    return out_ours, out_peft


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_outputs_and_gradients_match_peft_before_and_during_training(kind, dropout):
    ours, peft_layer, peft_params = make_pair(kind, dropout)
    ours.train(), peft_layer.train()
    assert ours.scaling == peft_layer.scaling["default"]
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    opt_peft = torch.optim.AdamW(list(peft_params.values()), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(3, 5, IN, generator=gen)
        target = torch.randn(3, 5, OUT, generator=gen)
        out_ours, out_peft = step_both(ours, peft_layer, peft_params, x, target, seed=100 + step)
        torch.testing.assert_close(out_ours, out_peft, atol=ATOL, rtol=0)
        for name, p in peft_params.items():
            torch.testing.assert_close(getattr(ours, name).grad, p.grad, atol=ATOL, rtol=0, msg=f"{kind} {name}")
        opt_ours.step(), opt_peft.step()
        opt_ours.zero_grad(), opt_peft.zero_grad()
    for name, p in peft_params.items():  # after 6 AdamW steps the weights are still the same
        torch.testing.assert_close(getattr(ours, name), p, atol=ATOL, rtol=0)
    # Only the adapter trains: the frozen layer has no gradient.
    assert ours.base.weight.grad is None and ours.base.bias.grad is None


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
def test_merged_layer_gives_the_same_output_and_unmerge_restores_w0(kind):
    ours, peft_layer, _ = make_pair(kind)
    ours.eval(), peft_layer.eval()
    w0 = ours.base.weight.detach().clone()
    x = torch.randn(4, IN)
    with torch.no_grad():
        unmerged = ours(x)
        ours.merge()
        merged = ours(x)
        peft_layer.merge()
    torch.testing.assert_close(merged, unmerged, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.base.weight, peft_layer.base_layer.weight, atol=ATOL, rtol=0)
    ours.unmerge()
    torch.testing.assert_close(ours.base.weight, w0, atol=1e-6, rtol=0)


def test_dora_merged_weight_is_magnitude_times_unit_direction():
    ours, _, _ = make_pair("dora")
    with torch.no_grad():
        ours.magnitude.mul_(torch.linspace(0.5, 2.0, OUT))
        updated = ours.base.weight + ours.scaling * ours.lora_B @ ours.lora_A
        expected = ours.magnitude.view(-1, 1) * updated / updated.norm(dim=1, keepdim=True)
    torch.testing.assert_close(ours.merged_weight(), expected, atol=1e-6, rtol=0)
    # Each output row of W' has length exactly m.
    torch.testing.assert_close(ours.merged_weight().norm(dim=1), ours.magnitude.detach(), atol=1e-5, rtol=0)


def test_dora_norm_detach_is_real():
    """Keeping the norm in the graph (detach_norm=False) gives other gradients for A and B than PEFT's."""
    ours, peft_layer, peft_params = make_pair("dora")
    undetached = copy.deepcopy(ours)
    undetached.detach_norm = False
    x, target = torch.randn(6, IN), torch.randn(6, OUT)
    for layer in (ours, undetached, peft_layer):
        ((layer(x) - target) ** 2).mean().backward()
    for name in ("lora_A", "lora_B"):
        torch.testing.assert_close(getattr(ours, name).grad, peft_params[name].grad, atol=ATOL, rtol=0)
        assert (getattr(undetached, name).grad - peft_params[name].grad).abs().max() > 1e-3, name
    # The forward value is the same either way: the detach only changes the backward pass.
    torch.testing.assert_close(undetached(x), ours(x), atol=1e-6, rtol=0)


def test_lora_init_matches_peft_default_and_starts_as_identity_update():
    torch.manual_seed(3)
    base = nn.Linear(IN, OUT)
    ours = LoRALinear(copy.deepcopy(base), r=R, lora_alpha=ALPHA)
    torch.manual_seed(3)
    _ = nn.Linear(IN, OUT)  # consume the same random numbers as `base`
    peft_layer = get_peft_model(Holder(copy.deepcopy(base)), LoraConfig(r=R, lora_alpha=ALPHA,
                                                                         target_modules=["lin"])).base_model.model.lin
    assert torch.count_nonzero(ours.lora_B) == 0
    assert ours.lora_A.shape == (R, IN) and ours.lora_B.shape == (OUT, R)
    # Kaiming-uniform with a=sqrt(5): bound = 1/sqrt(in_features), as in PEFT and nn.Linear.
    assert ours.lora_A.abs().max() <= 1 / IN ** 0.5
    assert peft_layer.lora_A["default"].weight.abs().max() <= 1 / IN ** 0.5
    x = torch.randn(2, IN)
    torch.testing.assert_close(ours(x), base(x), atol=0, rtol=0)
    assert not ours.base.weight.requires_grad and ours.lora_A.requires_grad and ours.lora_B.requires_grad


def test_rslora_scaling_is_alpha_over_sqrt_r():
    base = nn.Linear(IN, OUT)
    assert LoRALinear(base, r=16, lora_alpha=8).scaling == 0.5
    assert LoRALinear(nn.Linear(IN, OUT), r=16, lora_alpha=8, use_rslora=True).scaling == 2.0
