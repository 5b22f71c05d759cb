"""llm_tricks.rl against TRL 1.16, in float64: values and gradients.

The oracles are TRL's own lines, run on stand-in trainers (`trainer_stub`):
- advantages: `GRPOTrainer._generate_and_score_completions` and `RLOOTrainer._generate_and_score_completions`, whose
  `_generate` returns fixed one-token completions and whose reward function returns the rewards we choose;
- the policy loss: `GRPOTrainer._compute_loss`, whose model returns the per-token log-probs we choose, so gradients
  flow back to the very tensor we also give to `policy_loss`;
- GKD: the static `GKDTrainer.generalized_jsd_loss`, called directly.
TRL's `nanstd` computes Bessel's factor n / (n − 1) in float32, so advantages agree to ~1e-8 rather than 1e-16;
still far inside the 1e-6 tolerance.
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from llm_tricks.rl import (POLICY_LOSS_TYPES, generalized_jsd_loss, group_advantages, policy_loss,
                           policy_loss_with_metrics, rloo_advantages)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_rloo = pytest.importorskip("trl.trainer.rloo_trainer")
trl_gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")

TOL = dict(rtol=1e-6, atol=1e-6)
F64 = torch.float64


class _Accelerator:
    device = torch.device("cpu")
    process_index = 0
    num_processes = 1

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def reduce(self, tensor, reduction="sum"):
        return tensor


def trainer_stub(**attributes) -> SimpleNamespace:
    """What GRPOTrainer / RLOOTrainer read from `self` on one process, with nothing optional switched on."""
    defaults = dict(model=SimpleNamespace(training=True, is_gradient_checkpointing=False), accelerator=_Accelerator(),
                    _metrics=defaultdict(lambda: defaultdict(list)),
                    _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
                           "extra": defaultdict(list)},
                    _pending_extra_logs={}, _pending_metrics={}, _tokenizer=SimpleNamespace(pad_token_id=0),
                    pad_to_multiple_of=None, mask_truncated_completions=False, use_vllm=False,
                    vllm_importance_sampling_correction=False, environment_factories=None, tools=None,
                    environments=None, log_multimodal=False, aux_loss_enabled=False, beta=0.0,
                    current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False)
    return SimpleNamespace(**{**defaults, **attributes})


def gradient(loss: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, tensor, retain_graph=True)[0]


# ---- advantages ---------------------------------------------------------------------------------------------------

def trl_advantages(trainer, rewards: torch.Tensor, group_size: int, **settings) -> torch.Tensor:
    """TRL's trainer._generate_and_score_completions on one-token completions whose rewards are `rewards`."""
    n = len(rewards)
    prompt_ids, completion_ids, completions = [[1, 2]] * n, [[3]] * n, ["answer"] * n
    if trainer is trl_grpo.GRPOTrainer:
        def generate(prompts):
            return prompt_ids, completion_ids, None, completions, None, {}, None, [[]] * n
        settings = {"multi_objective_aggregation": "sum_then_normalize", "num_iterations": 1, **settings}
    else:
        def generate(prompts):
            return prompt_ids, completion_ids, completions
        settings = {"reward_clip_range": None, **settings}
    args = SimpleNamespace(per_device_train_batch_size=n, steps_per_generation=1, gradient_accumulation_steps=1,
                           gradient_checkpointing_kwargs=None)
    stub = trainer_stub(args=args, _generate=generate, _calculate_rewards=lambda *_: rewards[:, None],
                        num_generations=group_size, reward_weights=torch.ones(1, dtype=rewards.dtype),
                        reward_func_names=["reward"],
                        _get_per_token_logps_and_entropies=lambda *_, **__: (torch.zeros(n, 1, dtype=F64), None, None),
                        **settings)
    return trainer._generate_and_score_completions(stub, [{"prompt": "question"}] * n)["advantages"]


def random_rewards(n_groups: int, group_size: int, seed: int) -> torch.Tensor:
    """Rewards of n_groups groups; the second group's rewards are all equal (no signal in it)."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n_groups, group_size, generator=generator, dtype=F64) * 2
    rewards[0, : group_size // 2] = 1.0  # ties inside a group are fine
    rewards[1] = 0.5
    return rewards.view(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [2, 4, 7])
def test_group_advantages_equal_trl(scale, group_size):
    rewards = random_rewards(n_groups=5, group_size=group_size, seed=group_size)
    ours = group_advantages(rewards, group_size, scale=scale)
    torch.testing.assert_close(ours, trl_advantages(trl_grpo.GRPOTrainer, rewards, group_size, scale_rewards=scale),
                               **TOL)
    assert torch.equal(ours.view(5, group_size)[1], torch.zeros(group_size, dtype=F64))
    torch.testing.assert_close(ours.view(5, group_size).sum(1), torch.zeros(5, dtype=F64), **TOL)  # zero-sum groups


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("group_size", [2, 4, 7])
def test_rloo_advantages_equal_trl(group_size, normalize):
    # TRL's RLOOTrainer subtracts β × Σ(log π_old − log π_ref) from the rewards *before* the baseline when β ≠ 0;
    # that is a change of reward, not of advantage, so it is compared here with β = 0 (its default is 0.05).
    rewards = random_rewards(n_groups=5, group_size=group_size, seed=10 + group_size)
    ours = rloo_advantages(rewards, group_size, normalize=normalize)
    theirs = trl_advantages(trl_rloo.RLOOTrainer, rewards, group_size, normalize_advantages=normalize)
    torch.testing.assert_close(ours, theirs, **TOL)
    if not normalize:  # the closed form: G / (G − 1) × (r − group mean)
        grouped = rewards.view(-1, group_size)
        scaled = group_size / (group_size - 1) * (grouped - grouped.mean(1, keepdim=True))
        torch.testing.assert_close(ours, scaled.view(-1), **TOL)


def test_advantage_errors_are_clear():
    rewards = torch.arange(6, dtype=F64)
    with pytest.raises(ValueError, match="6 rewards do not split into groups of 4"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="unknown scale 'std'"):
        group_advantages(rewards, 3, scale="std")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(rewards.view(2, 3), 3)


# ---- the policy loss ----------------------------------------------------------------------------------------------

def rollout(seed: int, drift: float, token_level: bool = False, lengths=(9, 3, 1, 6, 0, 8, 2, 7)) -> dict:
    """Per-token log-probs for 8 completions of unequal lengths, padded to 9: one of full width, one of length 1,
    and one of length 0 (a truncated completion masked out). Padded positions hold real-looking numbers, so
    forgetting the mask changes the result. `drift` is how far the sampling policy (old_logps) is from the current
    one: 0.01 keeps every ratio inside 1 ± 0.2, 0.4 does not."""
    generator = torch.Generator().manual_seed(seed)
    batch, width = len(lengths), 9
    lengths = torch.tensor(lengths)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    logps = (-torch.rand(batch, width, generator=generator, dtype=F64) * 4).requires_grad_()
    noise = torch.randn(batch, width, generator=generator, dtype=F64)
    ref = logps.detach() + 0.5 * torch.randn(batch, width, generator=generator, dtype=F64)
    rewards = torch.randn(batch, generator=generator, dtype=F64)
    advantages = group_advantages(rewards, 4)
    if token_level:  # e.g. per-token shaping: each token its own advantage
        advantages = advantages[:, None] + 0.5 * torch.randn(batch, width, generator=generator, dtype=F64)
    return {"logps": logps, "old_logps": None if drift == 0 else logps.detach() + drift * noise, "ref_logps": ref,
            "advantages": advantages, "mask": mask}


def trl_policy_loss(logps, old_logps, advantages, mask, loss_type, epsilon_low=0.2, epsilon_high=0.2,
                    ref_logps=None, beta=0.0, max_completion_length=None, use_bias_correction_kl=False):
    """GRPOTrainer._compute_loss with its model returning `logps`; (loss, the metrics it logged)."""
    batch, width = logps.shape
    inputs = {"prompt_ids": torch.ones(batch, 2, dtype=torch.long),
              "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
              "completion_ids": torch.ones(batch, width, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "num_items_in_batch": mask.sum()}
    if old_logps is not None:
        inputs["old_per_token_logps"] = old_logps
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps
    args = SimpleNamespace(delta=None, use_bias_correction_kl=use_bias_correction_kl, steps_per_generation=1)
    stub = trainer_stub(args=args, loss_type=loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                        beta=beta, max_completion_length=max_completion_length, top_entropy_quantile=1.0,
                        off_policy_mask_threshold=None, importance_sampling_level="token",
                        _get_per_token_logps_and_entropies=lambda *_, **__: (logps, torch.zeros_like(logps.detach()),
                                                                            None))
    loss = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, {name: values[-1] for name, values in stub._metrics["train"].items()}


# (drift, epsilon_high): on-policy, off-policy inside the clip, clipped both ways, and DAPO's clip-higher
CLIP_CASES = [(0.0, 0.2), (0.01, 0.2), (0.4, 0.2), (0.4, 0.28)]


@pytest.mark.parametrize("token_level", [False, True], ids=["sequence_advantages", "token_advantages"])
@pytest.mark.parametrize("drift,epsilon_high", CLIP_CASES, ids=["on_policy", "inside_clip", "clipped", "clip_higher"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", POLICY_LOSS_TYPES)
def test_policy_loss_equals_trl(loss_type, beta, drift, epsilon_high, token_level):
    r = rollout(seed=int(drift * 100) + int(epsilon_high * 100), drift=drift, token_level=token_level)
    kwargs = dict(loss_type=loss_type, epsilon_low=0.2, epsilon_high=epsilon_high,
                  ref_logps=r["ref_logps"] if beta else None, beta=beta, max_completion_length=12)
    ours = policy_loss_with_metrics(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs)
    theirs, metrics = trl_policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs)
    torch.testing.assert_close(ours.loss, theirs, **TOL)
    torch.testing.assert_close(gradient(ours.loss, r["logps"]), gradient(theirs, r["logps"]), **TOL)
    torch.testing.assert_close(policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs),
                               ours.loss, rtol=0, atol=0)
    for name in ("low", "high", "region"):  # TRL logs these in float32
        assert getattr(ours, f"clip_ratio_{name}").item() == pytest.approx(metrics[f"clip_ratio/{name}_mean"],
                                                                          abs=1e-6)
    if beta:
        assert ours.kl.item() == pytest.approx(metrics["kl"], abs=1e-9)
    else:
        assert ours.kl is None and "kl" not in metrics
    # The cases really are what their names say.
    if drift == 0.4:
        assert ours.clip_ratio_low > 0 and ours.clip_ratio_high > 0
    else:
        assert ours.clip_ratio_region == 0


@pytest.mark.parametrize("drift", [0.0, 0.4])
def test_kl_ratio_weighted_equals_trl_default_bias_correction(drift):
    # TRL 1.16's default multiplies the k3 term by the ratio (use_bias_correction_kl=True): on-policy the value is
    # unchanged, the gradient is not (d ratio / d log π = ratio = 1, so the KL value itself joins the gradient).
    r = rollout(seed=21, drift=drift)
    kwargs = dict(loss_type="dapo", ref_logps=r["ref_logps"], beta=0.04)
    ours = policy_loss_with_metrics(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs,
                                    kl_ratio_weighted=True)
    theirs, metrics = trl_policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs,
                                      use_bias_correction_kl=True)
    torch.testing.assert_close(ours.loss, theirs, **TOL)
    torch.testing.assert_close(gradient(ours.loss, r["logps"]), gradient(theirs, r["logps"]), **TOL)
    assert ours.kl.item() == pytest.approx(metrics["kl"], abs=1e-9)
    plain = policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs)
    if drift == 0.0:
        torch.testing.assert_close(plain, ours.loss, **TOL)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(gradient(plain, r["logps"]), gradient(ours.loss, r["logps"]), **TOL)


def test_group_with_equal_rewards_has_zero_loss_and_gradient():
    rewards = torch.tensor([0.3, 1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)  # group 2: every answer scored 1
    r = rollout(seed=3, drift=0.4)  # off-policy and clipped, so no term is trivially 1
    for advantages in (group_advantages(rewards, 4, "group"), group_advantages(rewards, 4, "batch"),
                       group_advantages(rewards, 4, "none"), rloo_advantages(rewards, 4)):
        assert torch.equal(advantages[4:], torch.zeros(4, dtype=F64))  # exactly 0, not merely small
        for loss_type in POLICY_LOSS_TYPES:
            # The group alone: its loss is exactly 0 ...
            alone = policy_loss(r["logps"][4:], r["old_logps"][4:], advantages[4:], r["mask"][4:],
                                loss_type=loss_type, max_completion_length=12)
            assert alone.item() == 0.0
            assert torch.equal(gradient(alone, r["logps"]), torch.zeros_like(r["logps"]))
            # ... and inside a batch it sends no gradient to its own log-probs (with beta = 0: the KL term would).
            mixed = policy_loss(r["logps"], r["old_logps"], advantages, r["mask"], loss_type=loss_type,
                                max_completion_length=12)
            grads = gradient(mixed, r["logps"])
            assert torch.equal(grads[4:], torch.zeros_like(grads[4:])) and grads[:4].abs().sum() > 0
            theirs, _ = trl_policy_loss(r["logps"], r["old_logps"], advantages, r["mask"], loss_type,
                                        max_completion_length=12)
            torch.testing.assert_close(mixed, theirs, **TOL)
    assert torch.equal(trl_advantages(trl_grpo.GRPOTrainer, rewards, 4, scale_rewards="group")[4:],
                       torch.zeros(4, dtype=F64))


def test_first_step_loss_is_zero_but_gradient_is_not():
    # On-policy (num_iterations = 1) and beta = 0: ratio = 1, the per-token loss is −A, and A sums to 0 per group.
    r = rollout(seed=5, drift=0.0, lengths=(9, 3, 1, 6, 4, 8, 2, 7))  # no empty row: it would add 0, not −A
    loss = policy_loss(r["logps"], None, r["advantages"], r["mask"], loss_type="grpo")
    assert abs(loss.item()) < 1e-12
    assert gradient(loss, r["logps"]).abs().sum() > 0.1
    # Token-level normalisers weigh each answer by its length: −Σ A_i·|o_i| / Σ|o_i|, 0 only for equal lengths.
    lengths = r["mask"].sum(1).to(F64)
    dapo = policy_loss(r["logps"], None, r["advantages"], r["mask"], loss_type="dapo")
    torch.testing.assert_close(dapo, -(r["advantages"] * lengths).sum() / lengths.sum(), **TOL)
    assert abs(dapo.item()) > 1e-3
    equal_lengths = torch.ones_like(r["mask"])
    assert abs(policy_loss(r["logps"], None, r["advantages"], equal_lengths, loss_type="dapo").item()) < 1e-12


def test_policy_loss_errors_are_clear():
    r = rollout(seed=1, drift=0.0)
    args = (r["logps"], None, r["advantages"], r["mask"])
    with pytest.raises(ValueError, match="unknown policy loss_type 'ppo'"):
        policy_loss(*args, loss_type="ppo")
    with pytest.raises(ValueError, match="pass ref_logps"):
        policy_loss(*args, beta=0.04)
    with pytest.raises(ValueError, match="pass max_completion_length"):
        policy_loss(*args, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(r["logps"], None, r["advantages"][:3], r["mask"])
    with pytest.raises(ValueError, match="old_logps must have the shape"):
        policy_loss(r["logps"], r["logps"].detach()[:, :2], r["advantages"], r["mask"])


# ---- GKD ----------------------------------------------------------------------------------------------------------

def logits_and_labels(seed: int, vocab: int = 13):
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(3, 6, vocab, generator=generator, dtype=F64) * 2).requires_grad_()
    teacher = torch.randn(3, 6, vocab, generator=generator, dtype=F64) * 2
    labels = torch.randint(0, vocab, (3, 6), generator=generator)
    labels[0, :2] = -100   # a prompt
    labels[1, 4:] = -100   # padding
    labels[2, :] = -100    # a row with nothing to learn
    return student, teacher, labels


# 0.5 is symmetric in teacher and student, so a swapped mixture passes there: 0.1 and 0.9 would catch it.
@pytest.mark.parametrize("with_labels", [False, True], ids=["no_labels", "masked"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_equals_trl(beta, temperature, with_labels):
    student, teacher, labels = logits_and_labels(seed=int(beta * 10) + int(temperature))
    labels = labels if with_labels else None
    ours = generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    theirs = trl_gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(gradient(ours, student), gradient(theirs, student), **TOL)


def test_generalized_jsd_reductions_match_trl():
    student, teacher, labels = logits_and_labels(seed=7)
    total = generalized_jsd_loss(student, teacher, labels, beta=0.3, reduction="sum")
    torch.testing.assert_close(total, trl_gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=0.3,
                                                                              reduction="sum"), **TOL)
    per_position = generalized_jsd_loss(student, teacher, labels, beta=0.3, reduction="none")
    # TRL's "none" keeps the unmasked (position, vocabulary) entries; ours sums the vocabulary, 0 where masked.
    theirs = trl_gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=0.3, reduction="none")
    torch.testing.assert_close(per_position[labels != -100], theirs.sum(-1), **TOL)
    assert per_position.shape == labels.shape and torch.equal(per_position[2], torch.zeros(6, dtype=F64))
    assert (per_position[labels != -100] > 0).all()


def test_generalized_jsd_is_zero_for_identical_distributions_and_checks_inputs():
    student, _, labels = logits_and_labels(seed=8)
    for beta in (0.0, 0.5, 1.0):
        assert generalized_jsd_loss(student, student.detach() + 3.0, labels, beta=beta).abs().item() < 1e-12
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd_loss(student, student, beta=1.5)
    with pytest.raises(ValueError, match="unknown reduction 'mean'"):
        generalized_jsd_loss(student, student, reduction="mean")
    with pytest.raises(ValueError, match="same shape"):
        generalized_jsd_loss(student, student[..., :5])


# ---- plausible mistakes fail the same comparisons -----------------------------------------------------------------

def group_advantages_population_std(rewards, group_size):
    """A plausible mistake: the group's std without Bessel's correction."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    return (centred / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1)


def rloo_baseline_includes_itself(rewards, group_size):
    """A plausible mistake: the group mean (which contains r_i) as RLOO's baseline."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(1, keepdim=True)).view(-1)


@pytest.mark.parametrize("mistake", ["population std", "rloo baseline includes itself"])
def test_the_advantage_comparison_catches_plausible_mistakes(mistake):
    rewards = random_rewards(n_groups=4, group_size=4, seed=30)
    if mistake == "population std":
        reference = trl_advantages(trl_grpo.GRPOTrainer, rewards, 4, scale_rewards="group")
        torch.testing.assert_close(group_advantages(rewards, 4), reference, **TOL)
        wrong = group_advantages_population_std(rewards, 4)
    else:
        reference = trl_advantages(trl_rloo.RLOOTrainer, rewards, 4, normalize_advantages=False)
        torch.testing.assert_close(rloo_advantages(rewards, 4), reference, **TOL)
        wrong = rloo_baseline_includes_itself(rewards, 4)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, reference, **TOL)


@pytest.mark.parametrize("mistake", ["dapo reduced as grpo", "kl direction swapped", "mask forgotten",
                                     "symmetric clip"])
def test_the_policy_loss_comparison_catches_plausible_mistakes(mistake):
    r = rollout(seed=40, drift=0.4)
    kwargs = dict(loss_type="dapo", epsilon_high=0.28, ref_logps=r["ref_logps"], beta=0.04)
    reference, _ = trl_policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs)
    torch.testing.assert_close(policy_loss(r["logps"], r["old_logps"], r["advantages"], r["mask"], **kwargs),
                               reference, **TOL)
    wrong_args = {"dapo reduced as grpo": dict(kwargs, loss_type="grpo"),  # lengths are unequal in the rollout
                  # k3 of (log π − ref) is k3 of (ref' − log π) with ref' = 2·log π − ref
                  "kl direction swapped": dict(kwargs, ref_logps=2 * r["logps"].detach() - r["ref_logps"]),
                  "mask forgotten": kwargs, "symmetric clip": dict(kwargs, epsilon_high=0.2)}[mistake]
    mask = torch.ones_like(r["mask"]) if mistake == "mask forgotten" else r["mask"]
    wrong = policy_loss(r["logps"], r["old_logps"], r["advantages"], mask, **wrong_args)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, reference, **TOL)


@pytest.mark.parametrize("mistake", ["forward and reverse KL swapped", "divided by all positions",
                                     "temperature ignored"])
def test_the_gkd_comparison_catches_plausible_mistakes(mistake):
    student, teacher, labels = logits_and_labels(seed=50)
    reference = trl_gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=0.0, temperature=2.0)
    torch.testing.assert_close(generalized_jsd_loss(student, teacher, labels, beta=0.0, temperature=2.0),
                               reference, **TOL)
    if mistake == "forward and reverse KL swapped":
        wrong = generalized_jsd_loss(student, teacher, labels, beta=1.0, temperature=2.0)
    elif mistake == "divided by all positions":
        wrong = generalized_jsd_loss(student, teacher, labels, beta=0.0, temperature=2.0,
                                     reduction="sum") / labels.numel()
    else:
        wrong = generalized_jsd_loss(student, teacher, labels, beta=0.0, temperature=1.0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, reference, **TOL)
