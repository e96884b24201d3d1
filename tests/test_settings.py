"""GRACESettings and the defaults it shares with training: every default has one source."""

from __future__ import annotations

import inspect

from grace_trl import data, generation, pooling, rewards
from grace_trl.settings import GRACESettings


def test_training_settings_and_reward_defaults_come_from_one_source(tmp_path):
    from grace_trl.config import GRACEConfig
    from grace_trl.memory import TrainingShape

    config = GRACEConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    settings = GRACESettings()
    assert config.reward_variant == settings.reward_variant == rewards.DEFAULT_REWARD_VARIANT
    assert config.mode == settings.mode == data.DEFAULT_MODE
    assert config.pooling == settings.pooling == pooling.DEFAULT_POOLING
    assert config.max_completion_length == settings.max_new_tokens == generation.DEFAULT_MAX_NEW_TOKENS
    assert TrainingShape().max_completion_length == generation.DEFAULT_MAX_NEW_TOKENS
    # a default training run saves exactly the default settings
    assert config.grace_settings() == settings
    # the reward callable and the reward maths default to what the config passes them
    assert rewards.GRACEReward().params == config.reward_params()
    signature = inspect.signature(rewards.grace_reward_components).parameters
    assert {k: signature[k].default for k in config.reward_params()} == config.reward_params()
    assert config.reward_params() == {
        "mode": data.DEFAULT_MODE, "variant": rewards.DEFAULT_REWARD_VARIANT,
        "lambda_consistency": rewards.DEFAULT_LAMBDA_CONSISTENCY, "lambda_cross": rewards.DEFAULT_LAMBDA_CROSS,
        "tau": rewards.DEFAULT_TAU, "truncation_penalty": rewards.DEFAULT_TRUNCATION_PENALTY}


def test_command_line_defaults_and_choices_come_from_one_source(tmp_path):
    from grace_trl.commands.prepare_data import build_parser as prepare_parser
    from grace_trl.commands.train import build_parser as train_parser
    from grace_trl.config import GRACEConfig

    config = GRACEConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    train = {a.dest: a for a in train_parser()._actions}
    for name in ("mode", "pooling", "reward_variant", "lambda_consistency", "lambda_cross", "tau",
                 "truncation_penalty", "max_completion_length"):
        assert train[name].default == getattr(config, name), name
    prepare = {a.dest: a for a in prepare_parser()._actions}
    assert prepare["mode"].default == data.DEFAULT_MODE and tuple(prepare["mode"].choices) == data.MODES


def test_settings_round_trip(tmp_path):
    settings = GRACESettings(system_prompt=None, pooling="last", chat_template_kwargs={"enable_thinking": False})
    settings.save(str(tmp_path))
    assert GRACESettings.load(str(tmp_path)) == settings
    assert GRACESettings.load(str(tmp_path / "missing")) is None
