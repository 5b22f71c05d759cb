"""llm_tricks.preference against TRL 1.16, in float64: values and gradients.

TRL keeps most of these losses inside its trainers' `_compute_loss`, so the oracles call that code itself on a
stand-in trainer (`trainer_stub`) whose model returns the log-probs we give it: the numbers come from TRL's own
lines, not from a copy of its formulas in this file.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from llm_tricks.preference import dpo_loss, kto_loss, orpo_loss, sequence_logps, simpo_loss
from llm_tricks.preference.dpo import DPO_LOSS_TYPES

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto_trainer = pytest.importorskip("trl.trainer.kto_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")

TOL = dict(rtol=1e-6, atol=1e-6)


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather


def trainer_stub(**attributes) -> SimpleNamespace:
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           **attributes)


def fused_outputs(sequence_totals: torch.Tensor, width: int) -> SimpleNamespace:
    """What TRL's fused LM head returns: per-token log-probs (batch, width); here each row's total sits in its
    first column, so the per-row sums TRL takes are exactly `sequence_totals` and gradients flow back to them."""
    log_probs = torch.cat([sequence_totals[:, None], sequence_totals.new_zeros(len(sequence_totals), width - 1)], 1)
    zeros = torch.zeros_like(log_probs).detach()
    return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def random_pairs(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    def logps():
        return (-torch.rand(n, generator=generator, dtype=torch.float64) * 60 - 1).requires_grad_()
    return {"chosen": logps(), "rejected": logps(), "ref_chosen": logps(), "ref_rejected": logps(),
            "lengths_chosen": torch.randint(1, 40, (n,), generator=generator),
            "lengths_rejected": torch.randint(1, 40, (n,), generator=generator)}


def gradients(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs, retain_graph=True))


def trl_dpo_mean_loss(pairs, loss_type: str, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """TRL's DPOTrainer._compute_loss with precomputed reference log-probs; pair i's completion has the given length."""
    n, width = len(pairs["chosen"]), 48
    lengths = torch.cat([pairs["lengths_chosen"], pairs["lengths_rejected"]])
    completion_mask = (torch.arange(width + 1)[None, :] >= width + 1 - lengths[:, None]).long()
    inputs = {"input_ids": torch.ones(2 * n, width + 1, dtype=torch.long),
              "attention_mask": torch.ones(2 * n, width + 1, dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": pairs["ref_chosen"], "ref_rejected_logps": pairs["ref_rejected"]}
    totals = torch.cat([pairs["chosen"], pairs["rejected"]])
    stub = trainer_stub(ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                        use_weighting=False)
    model = lambda **kwargs: fused_outputs(totals, width)  # noqa: E731
    return trl_dpo.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust", "apo_zero", "apo_down"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl(loss_type, beta):
    pairs = random_pairs(seed=int(beta * 10))
    smoothing = 0.2 if loss_type == "robust" else 0.0
    theirs = trl_dpo_mean_loss(pairs, loss_type, beta, smoothing)
    if loss_type == "ipo":  # IPO works on per-token means; TRL divides the log-ratios by the completion lengths
        nc, nr = pairs["lengths_chosen"], pairs["lengths_rejected"]
        args = (pairs["chosen"] / nc, pairs["rejected"] / nr, pairs["ref_chosen"] / nc, pairs["ref_rejected"] / nr)
    else:
        args = (pairs["chosen"], pairs["rejected"], pairs["ref_chosen"], pairs["ref_rejected"])
    losses, chosen_rewards, rejected_rewards = dpo_loss(*args, beta=beta, loss_type=loss_type,
                                                         label_smoothing=smoothing)
    ours = losses.mean()
    torch.testing.assert_close(ours, theirs, **TOL)
    policy = (pairs["chosen"], pairs["rejected"])
    for mine, trls in zip(gradients(ours, *policy), gradients(theirs, *policy)):
        torch.testing.assert_close(mine, trls, **TOL)
    # Rewards are β × the log-ratios passed in (per-token means for ipo; TRL logs the sums there).
    torch.testing.assert_close(chosen_rewards, beta * (args[0] - args[2]).detach(), **TOL)
    torch.testing.assert_close(rejected_rewards, beta * (args[1] - args[3]).detach(), **TOL)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def cpo_stub(loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.0):
    return trainer_stub(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                        simpo_gamma=simpo_gamma)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_conservative_dpo_equals_trl_sigmoid_with_label_smoothing(smoothing):
    # TRL 1.16's DPOTrainer dropped label smoothing from `sigmoid`; its CPO trainer keeps the conservative form on
    # a margin it is given. Fed the log-ratios, it is conservative DPO.
    pairs, beta = random_pairs(seed=3), 0.2
    losses, _, _ = dpo_loss(pairs["chosen"], pairs["rejected"], pairs["ref_chosen"], pairs["ref_rejected"],
                            beta=beta, loss_type="sigmoid", label_smoothing=smoothing)
    theirs, _, _ = trl_cpo.CPOTrainer.cpo_loss(cpo_stub("sigmoid", beta, smoothing),
                                               pairs["chosen"] - pairs["ref_chosen"],
                                               pairs["rejected"] - pairs["ref_rejected"])
    torch.testing.assert_close(losses, theirs, **TOL)
    policy = (pairs["chosen"], pairs["rejected"])
    for mine, trls in zip(gradients(losses.sum(), *policy), gradients(theirs.sum(), *policy)):
        torch.testing.assert_close(mine, trls, **TOL)


def test_dpo_starts_at_log_2_and_rejects_unknown_types():
    logps = -torch.rand(4, dtype=torch.float64) * 30
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps, logps.flip(0), logps, logps.flip(0))
    torch.testing.assert_close(losses, torch.full_like(losses, torch.log(torch.tensor(2.0)).item()), **TOL)
    assert chosen_rewards.abs().max() == 0 and rejected_rewards.abs().max() == 0
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "hinge", "ipo", "robust", "apo_zero", "apo_down"}
    with pytest.raises(ValueError, match="unknown DPO loss_type 'exo'"):
        dpo_loss(logps, logps, logps, logps, loss_type="exo")


@pytest.mark.parametrize("beta,ratio,smoothing", [(2.0, 0.5, 0.0), (2.5, 0.3, 0.1), (0.7, 1.2, 0.0)])
def test_simpo_loss_equals_trl(beta, ratio, smoothing):
    pairs = random_pairs(seed=5)
    chosen = pairs["chosen"] / pairs["lengths_chosen"]  # per-token means
    rejected = pairs["rejected"] / pairs["lengths_rejected"]
    losses, chosen_rewards, rejected_rewards = simpo_loss(chosen, rejected, beta=beta, gamma_beta_ratio=ratio,
                                                          label_smoothing=smoothing)
    theirs, trl_chosen, trl_rejected = trl_cpo.CPOTrainer.cpo_loss(
        cpo_stub("simpo", beta, smoothing, simpo_gamma=ratio * beta), chosen, rejected)
    torch.testing.assert_close(losses, theirs, **TOL)
    torch.testing.assert_close(chosen_rewards, trl_chosen, **TOL)
    torch.testing.assert_close(rejected_rewards, trl_rejected, **TOL)
    policy = (pairs["chosen"], pairs["rejected"])
    for mine, trls in zip(gradients(losses.sum(), *policy), gradients(theirs.sum(), *policy)):
        torch.testing.assert_close(mine, trls, **TOL)


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_loss_equals_trl(beta):
    pairs = random_pairs(seed=7)
    # Per-token means, some close to 0 (probability near 1), where log(1 − eˣ) needs its careful branch.
    chosen = torch.cat([pairs["chosen"] / pairs["lengths_chosen"] / 10,
                        torch.tensor([-1e-3, -0.5], dtype=torch.float64)]).detach().requires_grad_()
    rejected = torch.cat([pairs["rejected"] / pairs["lengths_rejected"] / 10,
                          torch.tensor([-0.69, -2.0], dtype=torch.float64)]).detach().requires_grad_()
    losses, chosen_rewards, rejected_rewards = orpo_loss(chosen, rejected, beta=beta)
    # TRL returns β·log σ(log odds) (it subtracts the mean from the NLL) and computes in float32.
    theirs, trl_chosen, trl_rejected, _, _ = trl_orpo.ORPOTrainer.odds_ratio_loss(trainer_stub(beta=beta), chosen,
                                                                                  rejected)
    torch.testing.assert_close(losses, -theirs.double(), **TOL)
    torch.testing.assert_close(chosen_rewards, trl_chosen.double(), **TOL)
    torch.testing.assert_close(rejected_rewards, trl_rejected.double(), **TOL)
    for mine, trls in zip(gradients(losses.sum(), chosen, rejected), gradients(-theirs.sum(), chosen, rejected)):
        torch.testing.assert_close(mine, trls, **TOL)
    assert losses.dtype == torch.float64  # ours stays in the caller's precision


def trl_kto(chosen, rejected, kl, ref_chosen, ref_rejected, ref_kl, beta, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer._compute_loss with precomputed reference log-probs; batch = desirable rows, then the rest."""
    n, width = len(chosen) + len(rejected), 8
    totals = torch.cat([chosen, rejected])
    batch = {"input_ids": torch.ones(n, width + 1, dtype=torch.long),
             "attention_mask": torch.ones(n, width + 1, dtype=torch.long),
             "completion_mask": torch.ones(n, width + 1, dtype=torch.long),
             "label": torch.tensor([True] * len(chosen) + [False] * len(rejected)),
             "ref_logps": torch.cat([ref_chosen, ref_rejected]), "ref_KL_logps": ref_kl}
    stub = trainer_stub(precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=beta,
                        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    stub._compute_kl_logps = lambda model, batch: kl
    model = lambda **kwargs: fused_outputs(totals, width)  # noqa: E731
    return trl_kto_trainer.KTOTrainer._compute_loss(stub, model, batch, return_outputs=False), stub._metrics["train"]


@pytest.mark.parametrize("drift", [-3.0, 4.0])  # policy KL estimate below 0 (clamped) and above
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
def test_kto_loss_equals_trl(drift, weights):
    generator = torch.Generator().manual_seed(11)
    def logps(n):
        return (-torch.rand(n, generator=generator, dtype=torch.float64) * 40 - 1).requires_grad_()
    chosen, rejected, ref_chosen, ref_rejected, ref_kl = logps(4), logps(3), logps(4), logps(3), logps(7)
    kl = (ref_kl.detach() + drift + torch.randn(7, generator=generator, dtype=torch.float64)).requires_grad_()
    beta, (desirable, undesirable) = 0.1, weights
    losses, chosen_rewards, rejected_rewards, z = kto_loss(chosen, rejected, kl, ref_chosen, ref_rejected, ref_kl,
                                                           beta=beta, desirable_weight=desirable,
                                                           undesirable_weight=undesirable)
    theirs, metrics = trl_kto(chosen, rejected, kl, ref_chosen, ref_rejected, ref_kl, beta, desirable, undesirable)
    torch.testing.assert_close(losses.mean(), theirs, **TOL)
    for mine, trls in zip(gradients(losses.mean(), chosen, rejected), gradients(theirs, chosen, rejected)):
        torch.testing.assert_close(mine, trls, **TOL)
    assert z.item() == pytest.approx(metrics["kl"][-1], abs=1e-9)
    assert (z.item() == 0.0) == (drift < 0)
    assert not z.requires_grad  # a baseline: no gradient flows through it
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-9)
    assert rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-9)


# ---- sequence_logps ---------------------------------------------------------------------------------------------

def batch_with_spans(seed: int = 0, vocab: int = 50):
    """Logits and labels for 4 rows; row 1's trained span ends at the last position, row 3 trains nothing."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 12, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, vocab, (4, 12), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[0, 3:8] = ids[0, 3:8]
    labels[1, 5:] = ids[1, 5:]        # ends at the last position
    labels[2, 1:3] = ids[2, 1:3]
    labels[2, 9:11] = ids[2, 9:11]    # two assistant turns
    return logits, labels


def trl_batch_logps(logits, labels, average=False):
    return trl_cpo.CPOTrainer.get_batch_logps(logits, labels, average_log_prob=average)


def test_sequence_logps_equals_trl_with_gradients():
    logits, labels = batch_with_spans()
    ours, counts = sequence_logps(logits, labels)
    theirs = trl_batch_logps(logits, labels)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert counts.tolist() == [5, 7, 4, 0]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)  # distinct per row, so rows cannot swap
    torch.testing.assert_close(gradients((ours * weights).sum(), logits)[0],
                               gradients((theirs * weights).sum(), logits)[0], **TOL)
    means = ours[:3] / counts[:3]
    torch.testing.assert_close(means, trl_batch_logps(logits, labels, average=True)[:3], **TOL)


def test_sequence_logps_in_bfloat16_agrees_and_stays_small(monkeypatch):
    logits, labels = batch_with_spans(seed=1, vocab=300)
    monkeypatch.setattr("llm_tricks.preference.logps.CHUNK_POSITIONS", 3)  # several chunks, as a long batch would
    ours, _ = sequence_logps(logits.detach().bfloat16(), labels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), trl_batch_logps(logits.detach().bfloat16().double(), labels),
                               rtol=1e-5, atol=1e-4)


def sequence_logps_without_shift(logits, labels):
    """A plausible mistake: logits[:, t] scored against labels[:, t] (no causal shift)."""
    trained = labels != -100
    picked = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * trained).sum(-1)


def sequence_logps_wrong_gather_dim(logits, labels):
    """A plausible mistake: the gather runs along the sequence instead of the vocabulary."""
    next_logits, next_labels = logits[:, :-1], labels[:, 1:]
    trained = next_labels != -100
    log_probs = torch.log_softmax(next_logits, -1)
    index = next_labels.clamp(min=0, max=next_logits.shape[1] - 1)[..., None].expand(-1, -1, log_probs.shape[-1])
    return (log_probs.gather(1, index)[..., 0] * trained).sum(-1)


@pytest.mark.parametrize("mistake", [sequence_logps_without_shift, sequence_logps_wrong_gather_dim])
def test_the_comparison_catches_a_shift_or_gather_mistake(mistake):
    logits, labels = batch_with_spans(seed=2)
    with torch.no_grad():
        reference = trl_batch_logps(logits, labels)
        torch.testing.assert_close(sequence_logps(logits, labels)[0], reference, **TOL)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(mistake(logits, labels), reference, **TOL)


def test_sequence_logps_shapes_are_checked():
    with pytest.raises(ValueError, match="must agree"):
        sequence_logps(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("mistake", ["swapped sides", "no reference", "mean instead of sum"])
def test_the_dpo_comparison_catches_plausible_mistakes(mistake):
    pairs = random_pairs(seed=9)
    theirs = trl_dpo_mean_loss(pairs, "sigmoid", beta=0.1).detach()
    c, r, rc, rr = pairs["chosen"], pairs["rejected"], pairs["ref_chosen"], pairs["ref_rejected"]
    args = {"swapped sides": (r, c, rr, rc),  # chosen and rejected exchanged: the sign of the margin flips
            "no reference": (c, r, torch.zeros_like(rc), torch.zeros_like(rr)),
            "mean instead of sum": (c / pairs["lengths_chosen"], r / pairs["lengths_rejected"],
                                    rc / pairs["lengths_chosen"], rr / pairs["lengths_rejected"])}[mistake]
    torch.testing.assert_close(dpo_loss(c, r, rc, rr)[0].mean().detach(), theirs, **TOL)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(dpo_loss(*args)[0].mean().detach(), theirs, **TOL)
