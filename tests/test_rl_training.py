"""stage: grpo and stage: distill in `dojo train` on a tiny random-weight Llama: sampling, scoring, the loss over
micro-batches, reused completions, the reference, a teacher, and the saved outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm_dojo.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def letter_share(completions, prompts=None, **columns):
    """A reward that varies between completions: the share of the letter 'e' in the answer."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [t.count("e") / max(1, len(t)) for t in texts]


def constant_reward(completions, prompts=None, **columns):
    return [1.0 for _ in completions]


def prompt_records(n: int = 6) -> list[dict]:
    return [{"prompt": f"Question {i}: say something about the number {i}.", "solution": str(i)} for i in range(n)]


def config_for(tmp_path, data: str, model: str, **overrides):
    values = {"train_data_path": data, "model_name_or_path": model, "output_dir": str(tmp_path / "out"),
              "overwrite_output_dir": True, "max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2,
              "learning_rate": 1e-2, "disable_tqdm": True, "stage": "grpo", "num_generations": 4,
              "max_completion_length": 8, "max_len": 128, "reward_funcs": "tests.test_rl_training:letter_share",
              **overrides}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def build_trainer(tmp_path, data, model_dir, **overrides):
    """The recipe's trainer, set up as train_rl does it, without training."""
    from llm_dojo.data.chat_format import resolve_chat_format
    from llm_dojo.data.prompts import prepare_prompts
    from llm_dojo.infer.common import stop_token_ids
    from llm_dojo.models.adapters import build_optimizer
    from llm_dojo.models.loading import load_tokenizer
    from llm_dojo.recipes.rl import PromptBatches, RLTrainer, build_teacher, keep_prompts
    from llm_dojo.recipes.sft import adjust_training_arguments, load_trainable_model
    from llm_dojo.rewards.registry import RewardSet

    config = config_for(tmp_path, data, model_dir, **overrides)
    tokenizer = load_tokenizer(model_dir)
    prompts = prepare_prompts(config.data, config.rl, tokenizer)
    adjust_training_arguments(config)
    model = load_trainable_model(config)
    rewards = RewardSet.from_config(config.rl.reward_funcs.split(","), None) if config.rl.reward_funcs else None
    trainer = RLTrainer(model=model, args=config.training,
                        train_dataset=PromptBatches(prompts.train, 2, config.rl.num_iterations, 0),
                        data_collator=keep_prompts, processing_class=tokenizer,
                        optimizers=(build_optimizer(model, config), None), rl=config.rl,
                        beta=config.stage.resolved_beta(), rewards=rewards,
                        stop_ids=stop_token_ids(tokenizer, model, resolve_chat_format(tokenizer)),
                        teacher=build_teacher(config))
    return trainer, prompts


@pytest.fixture
def prompts_file(write_jsonl):
    return write_jsonl(prompt_records(), "prompts.jsonl")


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_grpo_trains_logs_rewards_and_saves_a_peft_adapter(tmp_path, prompts_file, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm_dojo.recipes.sft import train

    model_dir = tiny_model_dir("llama")
    config = config_for(tmp_path, prompts_file, model_dir, eval_prompts_path=prompts_file)
    summary = train(config)
    logged = [entry for entry in summary["log_history"] if "loss" in entry]
    assert len(logged) == 2
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "rewards/letter_share/mean"):
        assert key in logged[0], key
    assert 0 <= logged[0]["completions/mean_length"] <= 8
    assert summary["stage"] == "grpo" and summary["samples_trained"] == 2 * 2 * 4  # steps × prompts × generations
    assert set(summary["heldout_reward_before"]) >= {"reward", "rewards/letter_share/mean"}
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").exists() and (out / "training_loss.png").exists()
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    PeftModel.from_pretrained(base, str(out))  # plain peft loads it
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["stage"] == "grpo"


def test_equal_rewards_leave_the_adapter_unchanged(tmp_path, prompts_file, tiny_model_dir):
    """Every group's rewards are equal → every advantage is 0 → zero loss and zero gradient (beta 0)."""
    trainer, _ = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"),
                               reward_funcs="tests.test_rl_training:constant_reward")
    before = adapter_weights(trainer.model)
    trainer.train()
    after = adapter_weights(trainer.model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["loss"] == 0 and entry["frac_reward_zero_std"] == 1 for entry in logged)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_whole_batch(tmp_path, prompts_file, tiny_model_dir, loss_type):
    """Split into parts under a token budget, the gradient equals one pass over all the completions."""
    trainer, prompts = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"), rl_loss_type=loss_type,
                                     num_iterations=2, beta=0.1, lora_dropout=0.0)
    model = trainer.model
    experience = trainer.make_experience(model, prompts.train[:2])
    assert experience["old_logps"] is not None and experience["ref_logps"] is not None

    def gradient(budget):
        model.zero_grad()
        trainer.args.micro_batch_tokens = budget
        from llm_dojo.recipes.rl import split_rows_by_budget

        parts = split_rows_by_budget(experience["row_lengths"], budget)
        for rows in parts:
            trainer.compute_loss(model, trainer.part_of(experience, rows)).backward()
        return len(parts), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()

    whole_parts, whole = gradient(None)
    split_parts, split = gradient(40)
    assert whole_parts == 1 and split_parts > 2
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_skipping_zero_advantage_rows_leaves_the_gradient_unchanged(tmp_path, prompts_file, tiny_model_dir,
                                                                     loss_type):
    """Completions with advantage 0 (β 0) are not run forward; they still count in the normaliser."""
    trainer, prompts = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"), rl_loss_type=loss_type,
                                     lora_dropout=0.0)
    model = trainer.model
    experience = trainer.make_experience(model, prompts.train[:2])
    experience["advantages"][:4] = 0  # the first group learns nothing
    assert trainer.rows_that_learn(experience) == [4, 5, 6, 7]

    def gradient(rows):
        model.zero_grad()
        trainer.compute_loss(model, trainer.part_of(experience, rows)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()

    torch.testing.assert_close(gradient(trainer.rows_that_learn(experience)), gradient(list(range(8))),
                               rtol=1e-5, atol=1e-7)
    trainer.beta = 0.1  # with a KL term every row has a gradient
    assert trainer.rows_that_learn(experience) == list(range(8))


def test_sampling_with_the_adapter_folded_in_gives_the_same_tokens(tmp_path, prompts_file, tiny_model_dir):
    """Greedy completions are the same with LoRA folded into the weights, and the base weights come back exact."""
    from llm_dojo.rollout import generate

    trainer, prompts = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"), lora_dropout=0.0)
    model = trainer.model
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # an adapter that changes the answers
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    prompt_ids = [p["prompt_ids"] for p in prompts.train[:3]]
    common = dict(num_generations=1, max_new_tokens=8, stop_ids=[-1], greedy=True)
    folded = generate.sample_completions(model, trainer.processing_class, prompt_ids, **common)
    assert generate.foldable_lora_layers(model)
    original = generate.foldable_lora_layers
    generate.foldable_lora_layers = lambda model: []
    try:
        plain = generate.sample_completions(model, trainer.processing_class, prompt_ids, **common)
    finally:
        generate.foldable_lora_layers = original
    assert folded.completion_ids == plain.completion_ids
    ids = torch.tensor([prompt_ids[0]])
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with generate.adapter_folded_into_weights(model):
            folded_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            without = model(input_ids=ids).logits
    torch.testing.assert_close(folded_logits, with_adapter, rtol=1e-4, atol=1e-4)
    assert (without - with_adapter).abs().max() > 1e-2  # the adapter mattered
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if "base_layer" in n)


def test_completion_logps_do_not_depend_on_padding(tmp_path, prompts_file, tiny_model_dir):
    from llm_dojo.recipes.rl import completion_batch, completion_logps

    trainer, prompts = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"))
    model = trainer.model.eval()
    prompt_ids = [prompts.train[0]["prompt_ids"], prompts.train[1]["prompt_ids"][:5]]
    completion_ids = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    with torch.no_grad():
        together = completion_logps(model, completion_batch(prompt_ids, completion_ids, 0, "cpu"))
        for row in range(2):
            alone = completion_logps(model, completion_batch([prompt_ids[row]], [completion_ids[row]], 0, "cpu"))
            n = len(completion_ids[row])
            torch.testing.assert_close(together[row, :n], alone[0, :n], rtol=1e-5, atol=1e-5)
            assert torch.all(together[row, n:] == 0)
            # and against a plain forward with full logits
            ids = torch.tensor([prompt_ids[row] + completion_ids[row]])
            logits = model(input_ids=ids).logits[0, len(prompt_ids[row]) - 1:-1].log_softmax(-1)
            expected = logits.gather(-1, torch.tensor(completion_ids[row])[:, None]).squeeze(-1)
            torch.testing.assert_close(alone[0, :n], expected, rtol=1e-5, atol=1e-5)


def test_completions_are_reused_for_num_iterations_steps(tmp_path, prompts_file, tiny_model_dir):
    trainer, _ = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"), num_iterations=2, max_steps=4,
                               epsilon=0.0001)
    calls = []
    original = trainer.make_experience
    trainer.make_experience = lambda model, prompts: calls.append(len(prompts)) or original(model, prompts)
    trainer.train()
    assert calls == [2, 2]  # steps 1 and 3 sample; steps 2 and 4 reuse
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    # The reused step's ratio moved away from 1 after an update, and the tiny clip range clipped some tokens.
    assert any(entry.get("clip_ratio/low", 0) + entry.get("clip_ratio/high", 0) > 0 for entry in logged)


def test_reference_kl_starts_at_zero(tmp_path, prompts_file, tiny_model_dir):
    """The reference is the base with the adapter off: at step 0 (LoRA B = 0) policy and reference agree."""
    trainer, prompts = build_trainer(tmp_path, prompts_file, tiny_model_dir("llama"), beta=0.05, max_steps=1,
                                     lora_dropout=0.0)
    trainer.train()
    first = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("train_mode", ["qlora", "full", "dora"])
def test_every_train_mode_starts_with_zero_kl_to_its_reference(tmp_path, prompts_file, tiny_model_dir, train_mode):
    """QLoRA and DoRA: the 4-bit / DoRA base with the adapter off; full fine-tuning: a frozen copy of the start."""
    from llm_dojo.recipes.sft import train

    extra = {"train_mode": "lora", "use_dora": True} if train_mode == "dora" else {"train_mode": train_mode}
    config = config_for(tmp_path, prompts_file, tiny_model_dir("llama"), beta=0.05, max_steps=1, lora_dropout=0.0,
                        learning_rate=1e-4, **extra)
    summary = train(config)
    first = next(entry for entry in summary["log_history"] if "loss" in entry)
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(first["loss"])


def test_kd_advantage_with_the_same_model_as_teacher_is_zero_at_step_0(tmp_path, prompts_file, tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    trainer, prompts = build_trainer(tmp_path, prompts_file, model_dir, advantage="kd", teacher_model=model_dir,
                                     reward_funcs="", lora_dropout=0.0)
    experience = trainer.make_experience(trainer.model, prompts.train[:2])
    assert torch.allclose(experience["advantages"], torch.zeros_like(experience["advantages"]), atol=1e-5)


def test_grpo_config_errors(tmp_path, prompts_file, tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    with pytest.raises(ConfigError, match="reward_funcs"):
        config_for(tmp_path, prompts_file, model_dir, reward_funcs="")
    with pytest.raises(ConfigError, match="teacher"):
        config_for(tmp_path, prompts_file, model_dir, advantage="kd")
    with pytest.raises(ConfigError, match="num_generations"):
        config_for(tmp_path, prompts_file, model_dir, num_generations=1)
    with pytest.raises(ConfigError, match="teacher_model"):
        config_for(tmp_path, prompts_file, model_dir, stage="distill")


def test_distill_on_policy_with_the_student_as_teacher_starts_at_zero(tmp_path, write_jsonl, tiny_model_dir):
    from llm_dojo.recipes.sft import train

    model_dir = tiny_model_dir("llama")
    data = write_jsonl([{"instruction": f"Count to {i}.", "output": " ".join(str(k) for k in range(i + 1))}
                        for i in range(8)], "sft.jsonl")
    config = config_for(tmp_path, data, model_dir, stage="distill", teacher_model=model_dir, lmbda=1.0,
                        max_steps=4, reward_funcs="", lora_dropout=0.0)
    summary = train(config)
    logged = [entry for entry in summary["log_history"] if "loss" in entry]
    assert logged[0]["loss"] == pytest.approx(0.0, abs=1e-6)  # identical distributions: JSD 0
    assert summary["on_policy_batches"] == 4 and logged[0]["on_policy_share"] == 1.0
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()



@pytest.mark.slow
def test_the_embedded_model_learns_what_the_reward_asks(tmp_path, write_jsonl, embedded_path):
    """Not only "the weights changed": on the embedded SmolLM2, the RL demo's format reward (answer inside
    <answer></answer>) rises on the same prompts' sampled completions after a few steps."""
    from pathlib import Path

    from llm_dojo.recipes.sft import train

    demo = Path(__file__).resolve().parents[1] / "data" / "demo_rl_prompts.jsonl"
    prompts = write_jsonl([json.loads(line) for line in demo.read_text().splitlines()[:4]], "four.jsonl")
    config = config_for(tmp_path, prompts, embedded_path, max_steps=6, learning_rate=3e-4, num_generations=8,
                        max_completion_length=16, max_len=256, reward_funcs="format",
                        reward_format_pattern="<answer>[^<>]{1,80}</answer>", eval_prompts_path=prompts,
                        lora_dropout=0.0, seed=0)
    summary = train(config)
    before, after = summary["heldout_reward_before"]["reward"], summary["heldout_reward_after"]["reward"]
    assert 0.1 < before < 0.9, "the base model must sometimes earn the reward, or nothing can be learned"
    assert after >= before + 0.2, (before, after)
