"""Study v3's scale and its families: what ``study.py`` trains, sweeps and compares.

Kept apart from the stages (``study.py``) so a reader finds the recipe in one screen: every number
that sets the study's size (width, epochs, the threat model, the sweep's images and attacks) is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: where each recipe keeps what its sittings finished (study_archive.py); None: runs/ and results/ only
ARCHIVES = {"cpu": Path(__file__).resolve().parent / "study3"}


@dataclass(frozen=True)
class Family:
    """One seed family of the study: a registry model, trained with or without the threat model."""

    label: str
    model: str
    adversarial: bool = False
    # vgg16 pools early and costs 1/12 of the others: 3x the epochs (still 1/4 of their compute)
    # lift it to the accuracy bar (width 0.125, 5 epochs: 71.9 % test accuracy)
    epoch_factor: int = 1


FAMILIES = (
    Family("vgg16", "vgg16", epoch_factor=3),
    Family("vgg16_matched", "vgg16_matched"),
    Family("vgg16_att2_concat_pc", "vgg16_att2_concat_pc"),
    Family("vgg16_att3_concat_pc", "vgg16_att3_concat_pc"),
    Family("vgg16_matched_at", "vgg16_matched", adversarial=True),
    Family("vgg16_att3_concat_pc_at", "vgg16_att3_concat_pc", adversarial=True),
    # not a study family: the plain VGG under the same threat model (docs/adversarial_training.md)
    Family("vgg16_at", "vgg16", adversarial=True),
)
STUDY_FAMILIES = FAMILIES[:6]

#: (attention family, its compute-matched baseline): the comparisons of the verdict table
COMPARISONS = (
    ("vgg16_att2_concat_pc", "vgg16_matched"),
    ("vgg16_att3_concat_pc", "vgg16_matched"),
    ("vgg16_att3_concat_pc_at", "vgg16_matched_at"),
)


@dataclass(frozen=True)
class Recipe:
    """Everything that sets the study's scale; the sweep and the training read only this."""

    name: str
    width: float
    epochs: int                    # standard training
    adv_epochs: int                # adversarial training (adv_method at Linf 8/255)
    batch_size: int
    lr: float                      # one-cycle peak
    label_smoothing: float
    n_train: int | None            # first N training images (None: all 50,000)
    seeds: tuple[int, ...]
    n: int                         # test images attacked
    eps: tuple[float, ...]         # FGSM grid (/255)
    pgd_eps: tuple[float, ...]     # PGD-50, APGD-CE and the attention attacks
    autoattack_eps: tuple[float, ...]
    attack_steps: int
    square_queries: int
    sweep_batch: int
    amp: str = "auto"
    compile: bool = False
    device: str = "auto"
    n_test: int | None = None      # test images for each network's test accuracy (None: all 10,000)
    # AutoAttack's attacks (None: the standard version's four). A subset runs with the standard
    # settings on what the cheaper attacks left; docs/study.md says what it costs and misses
    autoattack_attacks: tuple[str, ...] | None = None
    # two-step PGD (Madry et al. 2018 with 2 steps of eps/2 from a random start), 3 passes per batch:
    # the single-step methods put a network of the study into catastrophic overfitting at epoch 3 of
    # 8 (FGSM-RS: vgg16_att3_concat_pc; N-FGSM at peak lr 0.1 and at 0.05: vgg16_matched; docs/study.md)
    adv_method: str = "pgd"
    adv_steps: int = 2
    adv_step_size: float = 4.0     # /255


RECIPES = {
    # 2 cores: width 0.125 keeps att3 at ~250 img/s float32 (one-step AT ~135) on an AVX512 Xeon
    "cpu": Recipe("cpu", width=0.125, epochs=5, adv_epochs=8, batch_size=128, lr=0.1,
                  # the sweep sized by its measured cost (docs/study.md, section 2): on an adversarially
                  # trained att3, 100 images cost 850 s on one core, AutoAttack at 2, 4 and 8/255 2/3 of it
                  label_smoothing=0.1, n_train=None, seeds=(0, 1, 2), n=500,
                  eps=(0, 1, 2, 3, 4, 5, 6, 7, 8), pgd_eps=(1, 2, 4, 8), autoattack_eps=(8,),
                  attack_steps=50, square_queries=1000, sweep_batch=250,
                  # FAB-T and Square's 5,000 queries are 3/4 of AutoAttack's cost on a robust sample
                  # (docs/study.md, section 2): on 2 cores the adversarially trained networks' AutoAttack
                  # at three budgets on 1,000 images is the two APGD attacks
                  autoattack_attacks=("apgd-ce", "apgd-t"),
                  # float32 on every machine: sittings may land on CPUs where `auto` picks differently
                  # (bf16 2.45x with AMX, 0.8-1x here), and a family must not mix precisions
                  amp="off"),
    # one H200, bf16 autocast, compiled, large batches: a reduced study (width 0.5, 1 seed per family)
    "gpu": Recipe("gpu", width=0.5, epochs=10, adv_epochs=10, batch_size=512, lr=0.2,
                  label_smoothing=0.1, n_train=None, seeds=(0,), n=1000,
                  eps=(0, 1, 2, 3, 4, 5, 6, 7, 8), pgd_eps=(1, 2, 4, 8), autoattack_eps=(8,),
                  attack_steps=50, square_queries=1000, sweep_batch=1000, amp="bf16", compile=True,
                  device="cuda"),
    # the GPU command's code path at a size CI runs on CPU in about a minute
    "rehearsal": Recipe("rehearsal", width=0.0625, epochs=1, adv_epochs=1, batch_size=64, lr=0.05,
                        label_smoothing=0.1, n_train=256, seeds=(0,), n=32, eps=(0, 2, 8),
                        pgd_eps=(8,), autoattack_eps=(), attack_steps=3, square_queries=20,
                        sweep_batch=32, n_test=128),
}
