"""theta-log's choice of metric columns (theta_log.rank_metric_columns), on rows' metrics alone."""

from __future__ import annotations

from types import SimpleNamespace

from git_theta_filter.theta_log import looks_like_metric, rank_metric_columns

# A Lightning-style checkpoint's scalars: Adam's settings and parameter ids beside the metrics.
ADAM_SETTINGS = {
    "optimizer_states.0.param_groups.0.lr": 0.001,
    "optimizer_states.0.param_groups.0.amsgrad": False,
    "optimizer_states.0.param_groups.0.betas.0": 0.9,
    "optimizer_states.0.param_groups.0.betas.1": 0.999,
    "optimizer_states.0.param_groups.0.capturable": False,
    "optimizer_states.0.param_groups.0.params.0": 0,
    "optimizer_states.0.param_groups.0.params.1": 1,
    "lr_schedulers.0.base_lrs.0": 0.001,
}


def rows(*metrics: dict, path: str = "model.ckpt") -> list:
    return [SimpleNamespace(metrics=dict(m), path=path) for m in metrics]


def row(step: int, **extra) -> dict:
    return {
        **ADAM_SETTINGS,
        "epoch": step,
        "global_step": 10 * step,
        "train_loss": 1.0 / step,
        "val_loss": 0.5 / step,
        "val_acc": 0.5 + step / 10,
        "hparams.hidden": 32,
        "eval_runtime": 0.1 * step,
        **extra,
    }


def test_columns_put_changing_metrics_first_held_out_results_before_training() -> None:
    ranked = rank_metric_columns(rows(row(3), row(2), row(1)))
    assert ranked == ["val_acc", "val_loss", "train_loss", "epoch", "global_step", "eval_runtime"]


def test_columns_with_one_row_are_the_metric_like_names() -> None:
    assert rank_metric_columns(rows(row(1))) == [
        "val_acc",
        "val_loss",
        "train_loss",
        "epoch",
        "global_step",
    ]


def test_columns_show_an_optimizer_setting_only_when_it_changes() -> None:
    schedule = rows(
        row(2, **{"optimizer_states.0.param_groups.0.lr": 0.0005}),
        row(1),
    )
    ranked = rank_metric_columns(schedule)
    assert "optimizer_states.0.param_groups.0.lr" in ranked
    assert ranked.index("optimizer_states.0.param_groups.0.lr") > ranked.index("global_step")
    assert not any("betas" in name or "amsgrad" in name for name in ranked)


def test_columns_never_show_integer_list_items_even_when_they_change() -> None:
    ids = rows(
        row(2, **{"optimizer_states.0.param_groups.0.params.1": 5, "eval.per_class.0": 0.8}),
        row(1, **{"eval.per_class.0": 0.7}),
    )
    ranked = rank_metric_columns(ids)
    assert not any(".params." in name for name in ranked)
    assert "eval.per_class.0" in ranked  # a list of floats is a metric


def test_columns_treat_a_file_of_optimizer_state_as_settings() -> None:
    scalars = {"param_groups.0.lr": 0.01, "param_groups.0.weight_decay": 0.0}
    assert rank_metric_columns(rows(scalars, scalars, path="ckpt/optimizer.pt")) == []
    changed = {"param_groups.0.lr": 0.005, "param_groups.0.weight_decay": 0.0}
    assert rank_metric_columns(rows(changed, scalars, path="ckpt/optimizer.pt")) == [
        "param_groups.0.lr"
    ]


def test_names_that_look_like_metrics() -> None:
    for name in (
        "val.acc",
        "metrics.val_acc",
        "train.loss",
        "eval_f1",
        "test.bleu",
        "epoch",
        "lr",
        "perplexity",
        "eval.score",
        "val_loss",
    ):
        assert looks_like_metric(name), name
    for name in (
        "config.use_amp",
        "hparams.hidden",
        "eval_runtime",
        "eval_samples_per_second",
        "total_flos",
        "seed",
    ):
        assert not looks_like_metric(name), name
