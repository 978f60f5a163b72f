"""The order pytest-xdist hands out test groups: longest first.

``--dist loadgroup`` keeps each group (a module, or a package that shares a trained run) on one
worker, and by default starts the groups with the most tests first. The slowest groups are single
tests (each tutorial notebook is one test of a minute or more), so they came last: the final notebook
ran alone while the other worker had nothing left (the TensorFlow part idled 43% of its 8.5 minutes
that way). Starting the longest groups first (the classic longest-processing-time rule) leaves the
short tests to fill the end.

``SECONDS`` is what the slowest tests took in ``make test PYTEST_ARGS=--durations=30`` on the
slowest CPU profile (a 2-core AVX2-only EPYC, setup + call, 2026-12-07); a test not listed counts ``DEFAULT``.
Only the order depends on these figures, never a result: a stale figure costs minutes, not a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

NOTEBOOK = "tests/docs/test_notebooks.py::test_notebook_runs_and_shows_its_framework"
SECONDS = {
    f"{NOTEBOOK}[07-instance-segmentation]": 285,
    f"{NOTEBOOK}[01-tensorflow]": 171,
    f"{NOTEBOOK}[03-lightning]": 160,
    "tests/stacks/keras/test_lite.py::test_the_pretrained_keras_recipe_trains_on_real_nails_and_records_its_weights": 149,
    f"{NOTEBOOK}[08-deploy]": 147,
    "tests/cli/test_compare.py::test_compare_two_stacks_with_folds_then_runs": 142,
    f"{NOTEBOOK}[02-balanced-data]": 126,
    f"{NOTEBOOK}[06-segformer]": 124,
    f"{NOTEBOOK}[04-gpu-augmentation]": 109,
    f"{NOTEBOOK}[05-dali]": 104,
    "tests/stacks/mmdet/test_stack.py::TestMmdetContract::test_many_classes_train_and_score_per_class": 103,
    "tests/stacks/lightning/test_camvid.py::test_camvid_trains_and_scores_each_class": 71,
    "tests/stacks/lightning/test_stack.py::test_short_pretrained_training_segments_real_nails": 70,
    "tests/cli/test_tune.py::test_a_study_with_two_jobs_killed_and_continued_ends_with_its_trials": 67,
    "tests/stacks/keras/test_stack.py::TestKerasContract::test_resume_after_sigkill_loses_no_epoch"
    "[half-a-second-after]": 60,
    "tests/stacks/keras/test_stack.py::TestKerasContract::test_resume_after_sigkill_loses_no_epoch[at-the-line]": 60,
    "tests/cli/test_tune.py::test_a_study_runs_writes_the_best_config_and_continues": 58,
    "tests/stacks/keras/test_stack.py::TestKerasContract::test_many_classes_train_and_score_per_class": 54,
    "tests/cli/test_cluster.py::test_compare_folds_as_submitit_jobs": 53,
    "tests/stacks/mmdet/test_stack.py::test_torchrun_two_processes_on_cpu": 49,
    "tests/cli/test_cluster.py::test_a_study_shared_by_submitit_workers": 49,
    "tests/stacks/mmdet/test_stack.py::test_run_folder": 38,
    "tests/deploy/test_bench_predict.py::test_a_run_and_its_onnx_file_are_timed_on_the_same_photos": 34,
    "tests/stacks/keras/test_stack.py::test_run_folder_matches_lightning_keys": 33,
    "tests/cli/test_cluster.py::test_a_preempted_task_requeues_and_resumes_from_last_ckpt": 33,
    "tests/cli/test_compare.py::test_many_class_folds_report_the_miou_and_each_class": 32,
    "tests/stacks/mmdet/test_eject.py::test_mmdetections_runner_trains_the_folder_and_its_coco_is_nailsegs": 29,
    "tests/stacks/lightning/test_stack.py::test_a_time_budget_trims_the_epochs_and_sizes_the_schedule_to_them": 27,
    "tests/stacks/mmdet/test_stack.py::test_resume_extends_the_run": 27,
    "tests/stacks/lightning/test_bench.py::test_bench_train_reports_share_of_limit": 25,
    "tests/stacks/lightning/test_stack.py::TestLightningContract::test_resume_after_sigkill_loses_no_epoch"
    "[half-a-second-after]": 23,
    "tests/stacks/lightning/test_stack.py::test_two_nodes_meet_as_two_torchrun_launches_on_one_machine": 23,
    "tests/stacks/lightning/test_stack.py::TestLightningContract::test_resume_after_sigkill_loses_no_epoch"
    "[at-the-line]": 23,
    "tests/stacks/keras/test_stack.py::test_tf_pipeline_and_balance": 22,
    "tests/stacks/mmdet/test_stack.py::TestMmdetContract::test_best_falls_back_to_last": 21,
    "tests/stacks/keras/test_lite.py::test_sm_architectures_build_on_the_lite_backbone_offline": 21,
    "tests/stacks/keras/test_tfdata.py::test_bench_train_runs_each_keras_policy_with_and_without_xla": 20,
    "tests/stacks/lightning/test_upernet.py::test_upernet_exports_a_verified_onnx_and_resumes": 20,
    "tests/stacks/keras/test_lite.py::test_keras_lite_features_equal_the_torch_encoders[efficientnet-lite0]": 16,
    "tests/stacks/keras/test_stack.py::test_tflite_export_is_verified_and_onnx_refused": 16,
}
DEFAULT = 0.5


def expected_seconds(nodeid: str) -> float:
    """A test's figure (xdist's ``@group`` suffix ignored)."""
    return SECONDS.get(nodeid.split("@")[0], DEFAULT)


def longest_groups_first(items: Sequence, group_of: Callable[[object], str]) -> list:
    """``items`` reordered so that the groups with the most expected seconds come first. A group's
    tests stay together and in their order; groups of equal weight keep their collection order."""
    weight: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        group = group_of(item)
        weight[group] = weight.get(group, 0.0) + expected_seconds(item.nodeid)
        first.setdefault(group, index)
    return sorted(items, key=lambda item: (-weight[group_of(item)], first[group_of(item)]))
