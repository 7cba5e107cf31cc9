"""The two stages, by number: what each stage's package provides to the
commands that drive both the same way (training, evaluation sheets, the
benchmark, checkpoint conversion).  Above both stages, so that neither
stage's code dispatches to the other's."""

import dataclasses
from collections.abc import Callable

from misc.data.formats import HR_LR_RATIO
from stageI import experiment as stage_i
from stageI.trainer import learning_rate_schedule as stage_i_schedule
from stageII import experiment as stage_ii
from stageII.trainer import learning_rate_schedule as stage_ii_schedule


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage as the commands drive it."""

    number: int                         # 1 or 2
    hr_lr_ratio: int                    # its stored images: 1 (76 px) or HR_LR_RATIO (304 px)
    keep_every_n_hours: float           # snapshots kept for good, as the reference's Saver
    fresh_start: str                    # what a run without TRAIN.PRETRAINED_MODEL says
    evaluation_captions: tuple          # the splits whose captions the evaluation sheets show
    build_gan: Callable                 # (config, embedding_dim, strategy, lr_size, choices) -> trainer
    start_checkpoint: Callable          # (TRAIN.PRETRAINED_MODEL, --cfg) -> CheckpointInfo
    restore: Callable                   # (trainer, info, config, dataset, split) -> checkpoint path
    learning_rate_schedule: Callable    # (config) -> rate_for(optimizer name, epoch)
    epoch_preview: Callable             # (trainer, dataset, config, log_dir) -> preview(epoch, writer)
    evaluation_sheets: Callable         # (trainer, split, ids, copies) -> one uint8 sheet per image

    @property
    def name(self):
        return "Stage-" + "I" * self.number


STAGES = {
    1: Stage(number=1, hr_lr_ratio=1, keep_every_n_hours=2,
             fresh_start="Created model with fresh parameters.", evaluation_captions=(),
             build_gan=stage_i.build_gan, start_checkpoint=stage_i.start_checkpoint,
             restore=stage_i.restore, learning_rate_schedule=stage_i_schedule,
             epoch_preview=stage_i.epoch_preview, evaluation_sheets=stage_i.evaluation_sheets),
    2: Stage(number=2, hr_lr_ratio=HR_LR_RATIO, keep_every_n_hours=5,
             fresh_start="Created model with fresh parameters. Warning: TRAIN.PRETRAINED_MODEL is empty, "
                         "so Stage-II trains on an untrained (and frozen, unless TRAIN.FINETUNE_LR) "
                         "Stage-I generator.",
             evaluation_captions=("test",),
             build_gan=stage_ii.build_gan, start_checkpoint=stage_ii.start_checkpoint,
             restore=stage_ii.restore, learning_rate_schedule=stage_ii_schedule,
             epoch_preview=stage_ii.epoch_preview, evaluation_sheets=stage_ii.evaluation_sheets),
}


def build_stage_gan(config, stage, embedding_dim, strategy=None, lr_size=None, choices=None):
    """The trainer of Stage ``stage`` (1 or 2): that stage's ``build_gan``."""
    kwargs = {} if lr_size is None else {"lr_size": lr_size}
    return STAGES[stage].build_gan(config, embedding_dim, strategy, choices=choices, **kwargs)
