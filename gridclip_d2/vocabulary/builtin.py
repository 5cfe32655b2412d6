"""The built-in vocabularies, by name: ``"lvis"``, ``"synthetic"`` and ``"coco_ov"``.

- ``"lvis"``: LVIS v1's 1203 categories (Detectron2's ``lvis_v1_categories``) in id order, named as
  Detectron2's LVIS ``thing_classes`` (each category's first synonym), with their synonyms;
- ``"synthetic"``: the embedded data set's 30 categories, a colour and a shape each ("red circle"):
  first the 24 of six colours times four shapes (category ``k < 24`` is colour ``k // 4``, shape
  ``k % 4``), then six that show a colour ("pink") or a shape ("star") no other category has. The
  table lives here, not in ``gridclip_d2.data``: a model names its classes without the data
  package; the data set draws these names (``gridclip_d2.data.synthetic_shapes``);
- ``"coco_ov"``: the 65 COCO 2017 categories of the open-vocabulary COCO benchmark, in COCO id
  order, COCO's own names: 48 base and 17 novel (``OV_COCO_BASE_CLASSES`` /
  ``OV_COCO_NOVEL_CLASSES``). The split is Bansal et al., "Zero-Shot Object Detection" (ECCV 2018),
  as used by OVR-CNN (Zareian et al., "Open-Vocabulary Object Detection Using Captions", CVPR
  2021) and the open-vocabulary detectors after it. The data sets are ``gridclip_d2.data.coco_ov``.

A name that is not a built-in one is never guessed at: :func:`builtin_vocabulary` raises naming the
choices. Custom vocabularies are parsed by :func:`gridclip_d2.vocabulary.parse_vocabulary`.
"""

from typing import Tuple

from .names import Vocabulary

__all__ = [
    "BUILTIN_VOCABULARIES",
    "VOCABULARY_CHOICES",
    "SYNTHETIC_COLOURS",
    "SYNTHETIC_SHAPES",
    "SYNTHETIC_NAMES",
    "SYNTHETIC_NEW_CONCEPTS",
    "SYNTHETIC_CONCEPT_NAMES",
    "OV_COCO_CLASSES",
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "builtin_vocabulary",
]

BUILTIN_VOCABULARIES = ("lvis", "synthetic", "coco_ov")
# what the command-line tools offer: a built-in vocabulary, or "custom" names / a file
VOCABULARY_CHOICES = BUILTIN_VOCABULARIES + ("custom",)

SYNTHETIC_COLOURS: Tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "pink")
SYNTHETIC_SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
# The concepts that only these categories show: a colour and a shape of no other category.
SYNTHETIC_NEW_CONCEPTS: Tuple[str, ...] = ("pink", "star")
SYNTHETIC_CONCEPT_NAMES: Tuple[str, ...] = (
    "pink circle",
    "pink square",
    "pink cross",
    "green star",
    "blue star",
    "orange star",
)
# Category k < 24 is colour k // 4, shape k % 4 of the first six colours and four shapes; the six
# categories of the new concepts follow.
SYNTHETIC_NAMES: Tuple[str, ...] = (
    tuple(f"{c} {s}" for c in SYNTHETIC_COLOURS[:6] for s in SYNTHETIC_SHAPES[:4])
    + SYNTHETIC_CONCEPT_NAMES
)

# Open-vocabulary COCO (see the module docstring): the 65 categories in COCO 2017 id order (person
# is id 1, toothbrush id 90), every name a single word, and the 17 novel ones among them.
OV_COCO_CLASSES: Tuple[str, ...] = tuple(
    "person bicycle car motorcycle airplane bus train truck boat bench bird cat dog horse sheep "
    "cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard "
    "kite skateboard surfboard bottle cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot pizza donut cake chair couch bed toilet tv laptop mouse remote keyboard "
    "microwave oven toaster sink refrigerator book clock vase scissors toothbrush".split()
)
OV_COCO_NOVEL_CLASSES: Tuple[str, ...] = tuple(
    "airplane bus cat dog cow elephant umbrella tie snowboard skateboard cup knife cake couch "
    "keyboard sink scissors".split()
)
# The other 48, in the same order.
OV_COCO_BASE_CLASSES: Tuple[str, ...] = tuple(
    n for n in OV_COCO_CLASSES if n not in OV_COCO_NOVEL_CLASSES
)


def _lvis() -> Vocabulary:
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    # Names as Detectron2's LVIS metadata has them (thing_classes = each category's first synonym),
    # so that the vocabulary equals the classes LVIS labels and evaluation index. They differ from
    # the json's "name" once: id 162 is "horned_cow" there, "bull" in "name".
    names, synonyms = [], []
    for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"]):
        alternatives = list(c.get("synonyms") or [c["name"]])
        if c["name"] not in alternatives:
            alternatives.append(c["name"])
        names.append(alternatives[0])
        synonyms.append(tuple(alternatives))
    return Vocabulary(tuple(names), "the built-in vocabulary 'lvis'", tuple(synonyms))


def builtin_vocabulary(name: str) -> Vocabulary:
    """The built-in vocabulary ``name`` (see the module docstring)."""
    if name == "lvis":
        return _lvis()
    if name == "synthetic":
        return Vocabulary(SYNTHETIC_NAMES, "the built-in vocabulary 'synthetic'")
    if name == "coco_ov":
        return Vocabulary(OV_COCO_CLASSES, "the built-in vocabulary 'coco_ov'")
    raise ValueError(
        f"Unknown built-in vocabulary {name!r}; choose one of {', '.join(BUILTIN_VOCABULARIES)}"
    )
