"""Keypoint layouts: joint names, the skeleton drawn between them, the left/right
pairs a horizontal flip swaps and, for COCO, the per-keypoint OKS sigmas.

Keypoints everywhere in kvision are ``(..., K, 3)`` arrays of ``x, y, v`` in image
pixels (x right, y down, the pixel grid's corner at 0), ``v`` COCO's visibility:
0 not labelled (outside the image, or unknown), 1 labelled but hidden (occluded),
2 labelled and visible.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layout:
    """A keypoint layout: ``names`` (K), ``skeleton`` (pairs of joint indices drawn
    as limbs), ``flip_pairs`` (left/right joints a horizontal flip swaps) and
    ``sigmas`` (COCO's OKS constants, one per joint, written as pycocotools' source
    writes them: ten times the sigma, which ``cocoeval`` divides by 10, as
    :data:`kvision.metrics.pose.COCO_SIGMAS` does; None where the layout has none)."""

    name: str
    names: tuple
    skeleton: tuple
    flip_pairs: tuple
    sigmas: tuple | None = None

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def flip_permutation(self) -> list:
        """Joint ``j`` of a flipped image is joint ``flip_permutation()[j]`` of the
        original."""
        order = list(range(len(self.names)))
        for a, b in self.flip_pairs:
            order[a], order[b] = b, a
        return order


# MPII Human Pose (Andriluka et al., 2014), the order of its annotations and of
# bearpaw/pytorch-pose.
MPII = Layout(
    "mpii",
    ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
     "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
     "l_elbow", "l_wrist"),
    ((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
     (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15)),
    ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)))

# COCO keypoints (Lin et al., 2014): 17 joints; sigmas from pycocotools' cocoeval.
COCO = Layout(
    "coco",
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
     "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
     "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
     (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5),
     (4, 6)),
    ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89,
     .89))

LAYOUTS = {layout.name: layout for layout in (MPII, COCO)}


def _ibug68():
    """The 68 facial landmarks of iBUG's 300-W (Sagonas et al., 2013), 0-based: the
    jaw, the brows, the nose, the eyes and the lips, the subject's right first."""
    groups = (("jaw", 17), ("right_brow", 5), ("left_brow", 5), ("nose_bridge", 4),
              ("nose_base", 5), ("right_eye", 6), ("left_eye", 6), ("outer_lip", 12),
              ("inner_lip", 8))
    names, chains, start = [], [], 0
    for group, count in groups:
        names += [f"{group}_{i}" for i in range(count)]
        chain = [(start + i, start + i + 1) for i in range(count - 1)]
        if group.endswith(("eye", "lip")):               # closed outlines
            chain.append((start + count - 1, start))
        chains += chain
        start += count
    flips = ([(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
             + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47),
                (41, 46), (48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64),
                (61, 63), (67, 65)])
    return Layout("ibug68", tuple(names), tuple(chains), tuple(flips))


# iBUG's 68-point faces (the .pts files of 300-W, menpo, dlib).
IBUG68 = _ibug68()
LAYOUTS[IBUG68.name] = IBUG68
