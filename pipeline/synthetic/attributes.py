"""The 40 CelebA attributes and their sampling: each face's attributes are drawn first (with
CelebA-like frequencies and the obvious dependencies), then the face is drawn to show them.
"""
from __future__ import annotations

import random

# The official attribute order of list_attr_celeba.txt (bit i of a shard's .cls = ATTRIBUTES[i]).
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)


def sample_attributes(rng: random.Random) -> dict[str, bool]:
    """One face's attributes, with roughly CelebA's frequencies and the obvious dependencies.

    The sequence of ``rng`` calls is part of the output contract (same seed → same bytes): a
    reordered or added draw changes every image after it.
    """
    p = rng.random
    a = {name: False for name in ATTRIBUTES}
    male = p() < 0.42
    young = p() < 0.77
    a["Male"], a["Young"] = male, young
    a["Smiling"] = p() < 0.48
    a["Mouth_Slightly_Open"] = p() < (0.6 if a["Smiling"] else 0.25)
    a["Eyeglasses"] = p() < (0.05 if young else 0.15)
    a["Wearing_Hat"] = p() < 0.05
    a["Bald"] = male and not young and not a["Wearing_Hat"] and p() < 0.25
    a["Receding_Hairline"] = not a["Bald"] and p() < (0.25 if not young else 0.05)
    hair = rng.choices(["black", "brown", "blond", "gray", "auburn"],
                       weights=[0.34, 0.30, 0.20 if not male else 0.08, 0.02 if young else 0.3, 0.08])[0]
    a["Black_Hair"], a["Brown_Hair"] = hair == "black", hair == "brown"
    a["Blond_Hair"], a["Gray_Hair"] = hair == "blond", hair == "gray"
    a["Bangs"] = not a["Bald"] and not a["Receding_Hairline"] and p() < 0.18
    texture = rng.choices(["straight", "wavy", "curly"], weights=[0.45, 0.4, 0.15])[0]
    a["Straight_Hair"], a["Wavy_Hair"] = texture == "straight", texture == "wavy"
    a["Bushy_Eyebrows"] = p() < (0.3 if male else 0.08)
    a["Arched_Eyebrows"] = p() < (0.08 if male else 0.45)
    a["Narrow_Eyes"] = p() < 0.12
    a["Bags_Under_Eyes"] = p() < (0.12 if young else 0.45)
    a["Big_Nose"] = p() < (0.4 if male else 0.12)
    a["Pointy_Nose"] = not a["Big_Nose"] and p() < 0.3
    a["Big_Lips"] = p() < 0.24
    a["Chubby"] = p() < (0.04 if young else 0.15)
    a["Double_Chin"] = a["Chubby"] and p() < 0.6
    a["Oval_Face"] = not a["Chubby"] and p() < 0.3
    a["High_Cheekbones"] = p() < (0.65 if a["Smiling"] else 0.2)
    if male:
        beard = rng.choices(["none", "stubble", "goatee", "mustache", "full"], weights=[0.5, 0.2, 0.1, 0.07, 0.13])[0]
        a["5_o_Clock_Shadow"] = beard == "stubble"
        a["Goatee"] = beard in ("goatee", "full")
        a["Mustache"] = beard in ("mustache", "full")
        a["No_Beard"] = beard in ("none", "stubble")
        a["Sideburns"] = not a["Bald"] and p() < (0.6 if beard == "full" else 0.08)
        a["Wearing_Necktie"] = p() < 0.17
    else:
        a["No_Beard"] = True
        a["Heavy_Makeup"] = p() < 0.65
        a["Wearing_Lipstick"] = a["Heavy_Makeup"] or p() < 0.35
        a["Wearing_Earrings"] = p() < 0.32
        a["Wearing_Necklace"] = p() < 0.2
        a["Rosy_Cheeks"] = p() < 0.1
    a["Pale_Skin"] = p() < 0.045
    a["Blurry"] = p() < 0.05
    a["Attractive"] = p() < (0.25 + 0.35 * young + 0.2 * a["Heavy_Makeup"] - 0.2 * a["Blurry"])
    return a
