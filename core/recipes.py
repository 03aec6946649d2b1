"""The paper's training recipes as named presets (``hpatk train --recipe paper-top5``).

One table, :data:`RECIPES`: recipe -> setting -> (value, where the paper says so). A recipe
fills :class:`~hpatk.core.train_config.TrainConfig` fields; options given explicitly win.
Settings the paper leaves open (input size for 5 classes, the classic augmentation's
probabilities) are not part of a recipe: they keep hpatk's defaults. Section numbers refer
to Verma et al., Biomed. Eng. Lett. 2020.
"""

from __future__ import annotations

from typing import Any

from hpatk.core.errors import HpatkError

# The schedule both recipes share: Sec. 3.4 (28 classes); Sec. 3.5.1 says the 5-class
# training "is similar to the one mentioned earlier for 28 classes".
_SCHEDULE: dict[str, tuple[Any, str]] = {
    "lr_decay": (0.01, "Sec. 3.4, Eq. 4: lr = lr0 exp(-k epoch), k = 0.01"),
    "batch_size": (32, "Sec. 3.4: initial batch size 32"),
    "batch_double_every": (15, "Sec. 3.4: batch size doubled every 15 epochs"),
    "max_batch_size": (128, "Sec. 3.4: reaches 128 by the 30th epoch"),
    "loss": ("focal", "Sec. 3.3.2, Eq. 2-3 (and Sec. 3.5.2): focal loss"),
    "loss_params": ({"gamma": 2.0}, "Sec. 3.3.2: gamma 2, alpha 1 (read as no alpha "
                    "weighting: see the focal loss)"),
    "folds": (5, "Sec. 3.3.1 / 3.5.1: fivefold cross-validation"),
    "in_stains": (["green", "red", "blue"], "Sec. 2: yellow dropped (the external data "
                  "lacks it); RGB only"),
    "aug": ("classic", "Sec. 3.1.2, Table 2: classic augmentation (Table 3: --aug gan)"),
}

RECIPES: dict[str, dict[str, tuple[Any, str]]] = {
    "paper-top5": {
        "backbone": ("vgg16", "Sec. 3.5.1, Table 2: VGG16 best on 5 classes"),
        "head": ("paper", "Sec. 3.5.2: Dense 256 ReLU -> Dense 5 sigmoid"),
        "classes": ("top5", "Sec. 3.2: the 5 most populous classes (0, 25, 21, 2, 23)"),
        "lr": (1e-4, "Sec. 3.5.2: Adam, initial learning rate 0.0001"),
        "epochs": (50, "Sec. 3.5.2: trained for 50 epochs"),
        **_SCHEDULE,
    },
    "paper-28": {
        "backbone": ("inceptionv4", "Sec. 3.3.1, Table 1: InceptionV4 best on 28 classes"),
        "head": ("paper", "Sec. 3.3.2: Dropout 0.5 -> BatchNorm -> GAP -> Dense 128 ReLU -> "
                 "Dense 28 sigmoid"),
        "classes": ("all", "Sec. 3.3: all 28 classes"),
        "lr": (5e-4, "Sec. 3.3.2: Adam, initial learning rate 0.0005"),
        "epochs": (35, "Sec. 3.3.2 / 3.4: 35 epochs"),
        **_SCHEDULE,
    },
}


def recipe_names() -> list[str]:
    """The recipes, sorted."""
    return sorted(RECIPES)


def recipe_settings(name: str) -> dict[str, Any]:
    """``{TrainConfig field: value}`` of recipe ``name`` (fresh copies: safe to mutate).

    Raises:
        HpatkError: an unknown recipe (one line naming the known ones).
    """
    import copy

    if name not in RECIPES:
        raise HpatkError(f"--recipe '{name}' is not a recipe (known: "
                         f"{', '.join(recipe_names())})")
    return {k: copy.deepcopy(v) for k, (v, _) in RECIPES[name].items()}


def recipe_table(name: str) -> list[tuple[str, Any, str]]:
    """(setting, value, source in the paper) rows of recipe ``name``, for docs and reports."""
    recipe_settings(name)  # the same error for an unknown name
    return [(k, v, src) for k, (v, src) in RECIPES[name].items()]
