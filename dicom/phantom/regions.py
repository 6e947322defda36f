"""Structures of each body region, painted onto a :class:`~dicom.phantom.anatomy.Canvas`.

Positions and sizes are in millimetres of the reference body (see ``anatomy``). They are
coarse approximations of adult anatomy: every structure lies where a radiologist would
look for it, and left and right structures are mirror images.
"""

from __future__ import annotations

import numpy as np

from dicom.phantom.anatomy import (
    BODY_FAT,
    SIDES,
    Canvas,
    box,
    capsule,
    cylinder,
    ellipsoid,
    sided_label,
    trunk_axes,
)

CERVICAL_TOP, CERVICAL_STEP = 160.0, 15.0
THORACIC_TOP, THORACIC_STEP = 265.0, 23.0
LUMBAR_TOP, LUMBAR_STEP = 541.0, 32.0
SACRUM_TOP = 701.0

ARM_X = 205.0  # distance of the arm axis from the midline


def paint_anatomy(canvas: Canvas) -> None:
    """Paint every region in an order where inner and denser structures win."""
    paint_body_outline(canvas)
    paint_head(canvas)
    paint_neck(canvas)
    paint_thorax(canvas)
    paint_abdomen(canvas)
    paint_pelvis(canvas)
    paint_upper_limbs(canvas)
    paint_lower_limbs(canvas)
    paint_spine(canvas)
    paint_ribs_and_sternum(canvas)
    paint_pelvic_bones(canvas)
    paint_subcutaneous_tissue(canvas)


def vertebra_range(prefix: str, level: int) -> tuple[float, float]:
    """Return the depth range of vertebra ``prefix``+``level`` (C1-C7, T1-T12, L1-L5)."""
    top, step = {"c": (CERVICAL_TOP, CERVICAL_STEP), "t": (THORACIC_TOP, THORACIC_STEP), "l": (LUMBAR_TOP, LUMBAR_STEP)}[prefix]
    return top + step * (level - 1), top + step * level


# ----------------------------------------------------------------------------- outline
def paint_body_outline(canvas: Canvas) -> None:
    """Fill head, neck, trunk and thighs with body fat."""
    canvas.paint(ellipsoid((0.0, 5.0, 110.0), (72.0, 92.0, 112.0)), BODY_FAT)
    canvas.paint(cylinder(0.0, 12.0, 58.0, 58.0, 180.0, 300.0), BODY_FAT)

    def trunk(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        ax, ay = trunk_axes(d)
        return ((x / ax) ** 2 + (y / ay) ** 2 <= 1.0) & (d >= 275.0) & (d <= 910.0)

    canvas.paint((trunk, (-170.0, 170.0, -115.0, 115.0, 270.0, 915.0)), BODY_FAT)
    for sign in SIDES.values():
        canvas.paint(cylinder(sign * 88.0, 0.0, 88.0, 92.0, 860.0, 1080.0), BODY_FAT)


# ----------------------------------------------------------------------------- head
def paint_head(canvas: Canvas) -> None:
    """Scalp, skull, brain, orbits, sinuses, jaws and salivary glands."""
    scalp = canvas.site("scalp", "soft")
    canvas.paint(ellipsoid((0.0, 5.0, 110.0), (72.0, 92.0, 112.0)), scalp, within=_is_body_fat)

    def skull_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return canvas.choose(
            x,
            [
                (y < -35.0, "frontal_bone", "bone"),
                (y > 55.0, "occipital_bone", "bone"),
                ((d > 85.0) & (x < 0), "temporal_bone_right", "bone"),
                ((d > 85.0) & (x >= 0), "temporal_bone_left", "bone"),
                (x < 0, "parietal_bone_right", "bone"),
            ],
            ("parietal_bone_left", "bone"),
        )

    skull_shell = ellipsoid((0.0, 5.0, 110.0), (68.0, 88.0, 108.0))
    canvas.paint((lambda x, y, d: skull_shell[0](x, y, d) & (d < 150.0), skull_shell[1]), skull_label)

    def cerebrum_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        side = np.where(x >= 0, "left", "right")
        conditions = []
        for name in ("right", "left"):
            on_side = side == name
            conditions += [
                (on_side & (y < -20.0), f"frontal_lobe_{name}", "grey"),
                (on_side & (y > 50.0), f"occipital_lobe_{name}", "grey"),
                (on_side & (d > 80.0) & (np.abs(x) > 28.0), f"temporal_lobe_{name}", "grey"),
            ]
        conditions.append((x < 0, "parietal_lobe_right", "grey"))
        return canvas.choose(x, conditions, ("parietal_lobe_left", "grey"))

    canvas.paint(ellipsoid((0.0, 5.0, 88.0), (61.0, 81.0, 72.0)), cerebrum_label)
    canvas.paint(ellipsoid((0.0, 5.0, 88.0), (3.0, 70.0, 60.0)), BODY_FAT)  # interhemispheric fissure
    canvas.paint(ellipsoid((-12.0, 10.0, 88.0), (9.0, 12.0, 10.0)), canvas.site("thalamus_right", "grey"))
    canvas.paint(ellipsoid((12.0, 10.0, 88.0), (9.0, 12.0, 10.0)), canvas.site("thalamus_left", "grey"))
    canvas.paint(ellipsoid((0.0, 50.0, 132.0), (52.0, 26.0, 20.0)), sided_label(canvas, "cerebellar_hemisphere", "brain"))
    canvas.paint(cylinder(0.0, 25.0, 12.0, 12.0, 105.0, 165.0), canvas.site("brainstem", "brain"))

    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 32.0, -70.0, 112.0), (12.0, 12.0, 12.0)), canvas.site(f"eyeball_{side}", "eye"))
        canvas.paint(ellipsoid((sign * 30.0, -48.0, 142.0), (13.0, 15.0, 17.0)), canvas.site(f"maxillary_sinus_{side}", "sinus"))
        canvas.paint(ellipsoid((sign * 55.0, 8.0, 168.0), (13.0, 20.0, 25.0)), canvas.site(f"parotid_gland_{side}", "gland"))
        canvas.paint(ellipsoid((sign * 40.0, -28.0, 202.0), (11.0, 11.0, 11.0)), canvas.site(f"submandibular_gland_{side}", "gland"))
    canvas.paint(ellipsoid((0.0, -58.0, 140.0), (10.0, 20.0, 20.0)), canvas.site("nasal_cavity", "sinus"))

    def mandible(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        ring = np.sqrt((x / 52.0) ** 2 + ((y + 5.0) / 62.0) ** 2)
        return (ring > 0.86) & (ring <= 1.0) & (y < 25.0) & (d >= 178.0) & (d <= 212.0)

    canvas.paint((mandible, (-53.0, 53.0, -68.0, 26.0, 178.0, 212.0)), sided_label(canvas, "mandible", "bone"))


# ----------------------------------------------------------------------------- neck
def paint_neck(canvas: Canvas) -> None:
    """Pharynx, larynx, thyroid, cervical nodes, muscles and the cervical aerodigestive tract."""
    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 18.0, 2.0, 186.0), (8.0, 9.0, 10.0)), canvas.site(f"palatine_tonsil_{side}", "tonsil"))
        canvas.paint(ellipsoid((sign * 42.0, -12.0, 245.0), (9.0, 10.0, 45.0)), canvas.site(f"sternocleidomastoid_muscle_{side}", "muscle"))
        nodes = [
            ("cervical_node_level_2", (sign * 36.0, 5.0, 215.0)),
            ("cervical_node_level_3", (sign * 34.0, 5.0, 245.0)),
            ("cervical_node_level_4", (sign * 32.0, 2.0, 275.0)),
            ("cervical_node_level_5", (sign * 45.0, 38.0, 245.0)),
        ]
        for site, centre in nodes:
            canvas.paint(ellipsoid(centre, (7.0, 7.0, 9.0)), canvas.site(f"{site}_{side}", "node"))
    canvas.paint(ellipsoid((0.0, -14.0, 196.0), (14.0, 10.0, 10.0)), canvas.site("base_of_tongue", "tonsil"))
    canvas.paint(cylinder(0.0, -28.0, 15.0, 13.0, 222.0, 248.0), canvas.site("glottis", "soft"))
    canvas.paint(cylinder(0.0, -28.0, 5.0, 6.0, 222.0, 248.0), canvas.site("glottis", "airway"))
    canvas.paint(ellipsoid((-17.0, -18.0, 266.0), (9.0, 9.0, 19.0)), canvas.site("thyroid_right_lobe", "thyroid"))
    canvas.paint(ellipsoid((17.0, -18.0, 266.0), (9.0, 9.0, 19.0)), canvas.site("thyroid_left_lobe", "thyroid"))
    canvas.paint(ellipsoid((0.0, -28.0, 272.0), (9.0, 5.0, 6.0)), canvas.site("thyroid_isthmus", "thyroid"))
    canvas.paint(cylinder(0.0, -20.0, 9.0, 9.0, 248.0, 290.0), canvas.site("cervical_trachea", "airway"))
    canvas.paint(cylinder(0.0, -2.0, 7.0, 6.0, 250.0, 290.0), canvas.site("cervical_esophagus", "soft"))


# ----------------------------------------------------------------------------- thorax
def _fissure_y(d: np.ndarray) -> np.ndarray:
    """Oblique fissure: lung with y behind this line belongs to the lower lobe."""
    return 95.0 - 1.05 * (d - 330.0)


def _lung_label(canvas: Canvas):  # noqa: ANN202 - a label function
    def label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        lower = y > _fissure_y(d)
        ax = np.abs(x)
        basal = d >= 430.0
        right = x < 0
        conditions = [
            # Right lower lobe.
            (right & lower & ~basal, "right_lower_lobe_superior_segment", "lung"),
            (right & lower & (ax < 65.0), "right_lower_lobe_medial_basal_segment", "lung"),
            (right & lower & (ax > 110.0), "right_lower_lobe_lateral_basal_segment", "lung"),
            (right & lower & (y < 25.0), "right_lower_lobe_anterior_basal_segment", "lung"),
            (right & lower, "right_lower_lobe_posterior_basal_segment", "lung"),
            # Right middle lobe below the horizontal fissure.
            (right & (d >= 400.0) & (ax > 85.0), "right_middle_lobe_lateral_segment", "lung"),
            (right & (d >= 400.0), "right_middle_lobe_medial_segment", "lung"),
            # Right upper lobe.
            (right & (d < 320.0), "right_upper_lobe_apical_segment", "lung"),
            (right & (y >= 0.0), "right_upper_lobe_posterior_segment", "lung"),
            (right, "right_upper_lobe_anterior_segment", "lung"),
            # Left lower lobe.
            (lower & ~basal, "left_lower_lobe_superior_segment", "lung"),
            (lower & (ax > 110.0), "left_lower_lobe_lateral_basal_segment", "lung"),
            (lower & ((y < 25.0) | (ax < 65.0)), "left_lower_lobe_anteromedial_basal_segment", "lung"),
            (lower, "left_lower_lobe_posterior_basal_segment", "lung"),
            # Left upper lobe with the lingula.
            ((d < 330.0) | ((y >= 0.0) & (d < 380.0)), "left_upper_lobe_apicoposterior_segment", "lung"),
            (d < 400.0, "left_upper_lobe_anterior_segment", "lung"),
            (d < 450.0, "lingula_superior_segment", "lung"),
        ]
        return canvas.choose(x, conditions, ("lingula_inferior_segment", "lung"))

    return label


def paint_thorax(canvas: Canvas) -> None:
    """Chest wall, breasts, lungs, heart, great vessels, airways and thoracic nodes."""
    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 70.0, -92.0, 385.0), (62.0, 12.0, 48.0)), canvas.site(f"pectoralis_major_muscle_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 140.0, -20.0, 450.0), (14.0, 55.0, 65.0)), canvas.site(f"serratus_anterior_muscle_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 105.0, 85.0, 470.0), (40.0, 14.0, 70.0)), canvas.site(f"latissimus_dorsi_muscle_{side}", "muscle"))
        paint_breast(canvas, side, sign)

    def lungs(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        ax, ay = trunk_axes(d)
        inside = ((x / (ax - 22.0)) ** 2 + (y / (ay - 18.0)) ** 2) <= 1.0
        base = 500.0 + 10.0 * (x > 0) + 55.0 * (np.abs(x) / 140.0) ** 2 + 35.0 * np.clip(y / 100.0, 0.0, 1.0)
        apex = 272.0 + 0.5 * np.abs(np.abs(x) - 60.0) + 0.4 * np.abs(y)
        mediastinum = np.abs(x) < np.where(x > 0, 40.0, 32.0) + 0.0 * y
        spine = (np.abs(x) < 38.0) & (y > 20.0)
        return inside & (d >= apex) & (d <= base) & ~mediastinum & ~spine

    canvas.paint((lungs, (-160.0, 160.0, -105.0, 105.0, 270.0, 600.0)), _lung_label(canvas))

    heart_centre = canvas.body.shift("heart", (22.0, -22.0, 455.0))

    def heart_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return canvas.choose(
            x,
            [
                ((y > heart_centre[1] + 25.0) & (x < heart_centre[0] + 15.0), "heart_left_atrium", "blood"),
                (x > heart_centre[0] + 5.0, "heart_left_ventricle", "myocardium"),
            ],
            ("heart_right_heart", "blood"),
        )

    canvas.paint(ellipsoid(heart_centre, (67.0, 57.0, 62.0)), canvas.site("pericardium", "soft"))
    canvas.paint(ellipsoid(heart_centre, (62.0, 52.0, 57.0)), heart_label)

    canvas.paint(cylinder(-6.0, -14.0, 15.0, 15.0, 355.0, 420.0), canvas.site("ascending_aorta", "blood"))
    canvas.paint(capsule((-6.0, -14.0, 350.0), (20.0, 40.0, 350.0), 14.0), canvas.site("aortic_arch", "blood"))
    canvas.paint(cylinder(20.0, 40.0, 13.0, 13.0, 352.0, 525.0), canvas.site("descending_thoracic_aorta", "blood"))
    canvas.paint(ellipsoid((14.0, -28.0, 388.0), (14.0, 14.0, 16.0)), canvas.site("pulmonary_trunk", "blood"))
    canvas.paint(cylinder(0.0, -5.0, 9.0, 9.0, 290.0, 372.0), canvas.site("thoracic_trachea", "airway"))
    for site, d0, d1 in (("thoracic_esophagus_upper", 290.0, 370.0), ("thoracic_esophagus_middle", 370.0, 440.0), ("thoracic_esophagus_lower", 440.0, 515.0)):
        canvas.paint(cylinder(4.0, 22.0, 8.0, 7.0, d0, d1), canvas.site(site, "soft"))
    canvas.paint(ellipsoid((0.0, -62.0, 345.0), (22.0, 10.0, 25.0)), canvas.site("thymus", "soft"))
    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 28.0, 92.0, 420.0), (16.0, 14.0, 130.0)), canvas.site(f"thoracic_erector_spinae_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 62.0, 99.0, 345.0), (48.0, 7.0, 55.0)), canvas.site(f"thoracic_trapezius_{side}", "muscle"))

    stations = [
        ("mediastinal_station_2r", (-17.0, -10.0, 318.0)),
        ("mediastinal_station_2l", (14.0, -10.0, 322.0)),
        ("mediastinal_station_3a", (0.0, -42.0, 372.0)),
        ("mediastinal_station_4r", (-18.0, 2.0, 360.0)),
        ("mediastinal_station_4l", (14.0, 8.0, 372.0)),
        ("mediastinal_station_5", (30.0, -8.0, 378.0)),
        ("mediastinal_station_6", (26.0, -36.0, 342.0)),
        ("mediastinal_station_7", (0.0, 12.0, 398.0)),
        ("mediastinal_station_8", (-14.0, 32.0, 450.0)),
        ("hilar_station_10r", (-42.0, 6.0, 385.0)),
        ("hilar_station_10l", (44.0, 8.0, 392.0)),
    ]
    for site, centre in stations:
        canvas.paint(ellipsoid(centre, (7.0, 7.0, 8.0)), canvas.site(site, "node"))
    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 140.0, 5.0, 345.0), (12.0, 14.0, 14.0)), canvas.site(f"axillary_node_level_1_{side}", "node"))
        canvas.paint(ellipsoid((sign * 60.0, 5.0, 288.0), (8.0, 8.0, 9.0)), canvas.site(f"supraclavicular_node_{side}", "node"))
        canvas.paint(ellipsoid((sign * 28.0, -88.0, 390.0), (5.0, 5.0, 12.0)), canvas.site(f"internal_mammary_node_{side}", "node"))


def paint_breast(canvas: Canvas, side: str, sign: float) -> None:
    """Paint one breast split into quadrants around the nipple, smaller in the male phantom."""
    centre = (sign * 78.0, -112.0, 430.0)
    radii = (55.0, 32.0, 50.0) if not canvas.body.male else (40.0, 18.0, 34.0)

    def label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        outer = np.abs(x) > abs(centre[0])
        upper = d < centre[2]
        central = (x - centre[0]) ** 2 + (d - centre[2]) ** 2 < 14.0**2
        return canvas.choose(
            x,
            [
                (central, f"breast_central_{side}", "breast"),
                (upper & outer, f"breast_upper_outer_quadrant_{side}", "breast"),
                (upper, f"breast_upper_inner_quadrant_{side}", "breast"),
                (outer, f"breast_lower_outer_quadrant_{side}", "breast"),
            ],
            (f"breast_lower_inner_quadrant_{side}", "breast"),
        )

    canvas.paint(ellipsoid(centre, radii), label)


# ----------------------------------------------------------------------------- abdomen
def paint_abdomen(canvas: Canvas) -> None:
    """Abdominal wall, liver, biliary tract, spleen, stomach, pancreas, kidneys, bowel, vessels and nodes."""
    body = canvas.body
    for side, sign in SIDES.items():
        canvas.paint(box(sign * 8.0 if sign > 0 else -60.0, 60.0 if sign > 0 else -8.0, -112.0, -95.0, 560.0, 800.0),
                     canvas.site(f"rectus_abdominis_{side}", "muscle"), within=_is_body_fat)
        canvas.paint(ellipsoid((sign * 132.0, 10.0, 680.0), (16.0, 75.0, 90.0)), canvas.site(f"lateral_abdominal_wall_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 35.0, 88.0, 650.0), (22.0, 18.0, 85.0)), canvas.site(f"paraspinal_lumbar_muscle_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 42.0, 48.0, 700.0), (16.0, 18.0, 62.0)), canvas.site(f"psoas_muscle_{side}", "muscle"))
    canvas.paint(ellipsoid((0.0, -108.0, 700.0), (10.0, 6.0, 10.0)), canvas.site("umbilicus", "soft"))

    paint_liver(canvas)
    canvas.paint(ellipsoid(body.shift("liver", (-38.0, -48.0, 640.0)), (14.0, 14.0, 28.0)), canvas.site("gallbladder", "bile"))

    spleen = body.shift("spleen", (95.0, 55.0, 572.0))

    def spleen_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        middle = (d >= spleen[2] - 20.0) & (d <= spleen[2] + 20.0)
        return canvas.choose(
            x,
            [(middle & (x < spleen[0] - 8.0), "splenic_hilum", "spleen"), (d < spleen[2], "spleen_upper_pole", "spleen")],
            ("spleen_lower_pole", "spleen"),
        )

    canvas.paint(ellipsoid(spleen, (28.0, 42.0, 55.0)), spleen_label)

    stomach = body.shift("stomach", (50.0, -22.0, 572.0))

    def stomach_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return canvas.choose(
            x,
            [(x < stomach[0] - 25.0, "gastric_antrum", "stomach"), (d < stomach[2] - 25.0, "gastric_fundus", "stomach")],
            ("gastric_body", "stomach"),
        )

    canvas.paint(ellipsoid(stomach, (45.0, 38.0, 50.0)), stomach_label)

    head = np.asarray(body.shift("pancreas", (-28.0, 8.0, 622.0)))
    tail = np.asarray(body.shift("pancreas", (82.0, 32.0, 595.0)))

    def pancreas_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        t = (x - head[0]) / (tail[0] - head[0])
        return canvas.choose(x, [(t < 0.28, "pancreas_head", "pancreas"), (t < 0.72, "pancreas_body", "pancreas")], ("pancreas_tail", "pancreas"))

    canvas.paint(capsule(tuple(head), tuple(tail), 12.0), pancreas_label)

    for side, sign in SIDES.items():
        kidney = body.shift("kidneys", (sign * 72.0, 55.0, 632.0 + (14.0 if side == "right" else 0.0)))

        def kidney_label(x: np.ndarray, y: np.ndarray, d: np.ndarray, side: str = side, kidney: tuple = kidney) -> np.ndarray:
            return canvas.choose(
                x,
                [(d < kidney[2] - 18.0, f"kidney_upper_pole_{side}", "kidney"), (d > kidney[2] + 18.0, f"kidney_lower_pole_{side}", "kidney")],
                (f"kidney_interpolar_{side}", "kidney"),
            )

        canvas.paint(ellipsoid(kidney, (27.0, 24.0, 55.0)), kidney_label)
        canvas.paint(ellipsoid((kidney[0] - sign * 16.0, kidney[1] - 8.0, kidney[2]), (9.0, 9.0, 11.0)), canvas.site(f"renal_pelvis_{side}", "urine"))
        canvas.paint(ellipsoid((sign * 42.0, 42.0, kidney[2] - 80.0), (8.0, 12.0, 15.0)), canvas.site(f"adrenal_gland_{side}", "adrenal"))

    canvas.paint(cylinder(-100.0, 0.0, 22.0, 22.0, 625.0, 735.0), canvas.site("ascending_colon", "colon"))
    canvas.paint(capsule((-95.0, -55.0, 648.0), (-2.0, -60.0, 655.0), 19.0), canvas.site("transverse_colon_right", "colon"))
    canvas.paint(capsule((2.0, -60.0, 655.0), (95.0, -50.0, 640.0), 19.0), canvas.site("transverse_colon_left", "colon"))
    canvas.paint(cylinder(102.0, 20.0, 18.0, 18.0, 600.0, 745.0), canvas.site("descending_colon", "colon"))
    canvas.paint(ellipsoid((38.0, -40.0, 700.0), (45.0, 30.0, 35.0)), canvas.site("jejunum", "bowel"), within=_is_body_fat)
    canvas.paint(ellipsoid((-38.0, -35.0, 745.0), (45.0, 30.0, 35.0)), canvas.site("ileum", "bowel"), within=_is_body_fat)

    canvas.paint(cylinder(15.0, 5.0, 11.0, 11.0, 520.0, 738.0), canvas.site("abdominal_aorta", "blood"))
    canvas.paint(cylinder(-22.0, 8.0, 12.0, 12.0, 505.0, 740.0), canvas.site("inferior_vena_cava", "blood"))
    nodes = [
        ("coeliac_node", (5.0, -15.0, 572.0)),
        ("porta_hepatis_node", (-28.0, -12.0, 596.0)),
        ("left_para_aortic_node", (36.0, 12.0, 655.0)),
        ("right_paracaval_node", (-42.0, 10.0, 660.0)),
        ("interaortocaval_node", (-3.5, 2.0, 690.0)),
    ]
    for site, centre in nodes:
        canvas.paint(ellipsoid(centre, (6.0, 6.0, 8.0)), canvas.site(site, "node"))


def paint_liver(canvas: Canvas) -> None:
    """Liver with Couinaud segments split by the hepatic-vein and portal planes."""
    centre = canvas.body.shift("liver", (-50.0, 2.0, 585.0))
    cx, cy, cd = centre
    portal = cd - 8.0

    def liver_shape(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        inside = ((x - cx) / 98.0) ** 2 + ((y - cy) / 88.0) ** 2 + ((d - cd) / 78.0) ** 2 <= 1.0
        dome = d >= 505.0 + 0.15 * np.abs(x - cx)
        return inside & dome & (x < cx + 115.0)

    def liver_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        superior = d < portal
        caudate = ((x - (cx + 32.0)) / 14.0) ** 2 + ((y - (cy + 22.0)) / 14.0) ** 2 + ((d - cd) / 20.0) ** 2 <= 1.0
        left_lateral = x > cx + 58.0
        medial = x > cx + 25.0
        anterior = y < cy - 5.0
        return canvas.choose(
            x,
            [
                (caudate, "liver_segment_1", "liver"),
                (left_lateral & superior, "liver_segment_2", "liver"),
                (left_lateral, "liver_segment_3", "liver"),
                (medial & superior, "liver_segment_4a", "liver"),
                (medial, "liver_segment_4b", "liver"),
                (anterior & superior, "liver_segment_8", "liver"),
                (anterior, "liver_segment_5", "liver"),
                (superior, "liver_segment_7", "liver"),
            ],
            ("liver_segment_6", "liver"),
        )

    canvas.paint((liver_shape, (cx - 98.0, cx + 98.0, cy - 88.0, cy + 88.0, cd - 78.0, cd + 78.0)), liver_label)


# ----------------------------------------------------------------------------- pelvis
def paint_pelvis(canvas: Canvas) -> None:
    """Bladder, genital organs, rectum, sigmoid colon and pelvic nodes."""
    body = canvas.body
    bladder = body.shift("bladder", (0.0, -48.0, 852.0))

    def bladder_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return canvas.choose(
            x,
            [
                (d < bladder[2] - 12.0, "bladder_dome", "urine"),
                (d > bladder[2] + 14.0, "bladder_trigone", "urine"),
                (x > bladder[0] + 20.0, "bladder_lateral_wall_left", "urine"),
                (x < bladder[0] - 20.0, "bladder_lateral_wall_right", "urine"),
            ],
            ("bladder_dome", "urine"),
        )

    canvas.paint(ellipsoid(bladder, (40.0, 32.0, 34.0)), bladder_label)
    if body.male:
        canvas.paint(ellipsoid((0.0, -32.0, 898.0), (18.0, 15.0, 15.0)), sided_label(canvas, "prostate", "prostate"))
        for side, sign in SIDES.items():
            canvas.paint(ellipsoid((sign * 16.0, -8.0, 872.0), (12.0, 6.0, 8.0)), canvas.site(f"seminal_vesicle_{side}", "prostate"))
    else:
        canvas.paint(ellipsoid((0.0, -8.0, 815.0), (30.0, 24.0, 34.0)), canvas.site("uterine_body", "uterus"))
        canvas.paint(ellipsoid((0.0, 2.0, 858.0), (13.0, 13.0, 14.0)), canvas.site("uterine_cervix", "uterus"))
        for side, sign in SIDES.items():
            canvas.paint(ellipsoid((sign * 58.0, 10.0, 812.0), (11.0, 11.0, 13.0)), canvas.site(f"ovary_{side}", "gland"))

    for site, d0, d1 in (("rectum_upper", 795.0, 830.0), ("rectum_middle", 830.0, 865.0), ("rectum_lower", 865.0, 905.0)):
        canvas.paint(cylinder(0.0, 55.0, 18.0, 18.0, d0, d1), canvas.site(site, "colon"))
    canvas.paint(capsule((85.0, -5.0, 750.0), (15.0, 35.0, 795.0), 17.0), canvas.site("sigmoid_colon", "colon"))
    canvas.paint(ellipsoid((0.0, 50.0, 772.0), (6.0, 6.0, 8.0)), canvas.site("presacral_node", "node"))

    bifurcation = (15.0, 8.0, 738.0)
    for side, sign in SIDES.items():
        iliac_bifurcation = (sign * 45.0, 22.0, 792.0)
        canvas.paint(capsule(bifurcation, iliac_bifurcation, 7.0), canvas.site(f"common_iliac_artery_{side}", "blood"))
        canvas.paint(capsule(iliac_bifurcation, (sign * 78.0, -35.0, 885.0), 6.0), canvas.site(f"external_iliac_artery_{side}", "blood"))

    for side, sign in SIDES.items():
        nodes = [
            ("common_iliac_node", (sign * 28.0, 18.0, 742.0)),
            ("external_iliac_node", (sign * 68.0, -18.0, 822.0)),
            ("internal_iliac_node", (sign * 55.0, 35.0, 805.0)),
            ("obturator_node", (sign * 58.0, 0.0, 852.0)),
            ("superficial_inguinal_node", (sign * 82.0, -78.0, 905.0)),
        ]
        for site, centre in nodes:
            canvas.paint(ellipsoid(centre, (7.0, 7.0, 9.0)), canvas.site(f"{site}_{side}", "node"))


# ----------------------------------------------------------------------------- limbs
def paint_upper_limbs(canvas: Canvas) -> None:
    """Arms at the sides: shoulder girdle, upper arm, forearm and hand."""
    for side, sign in SIDES.items():
        ax = sign * ARM_X

        def arm(x: np.ndarray, y: np.ndarray, d: np.ndarray, ax: float = ax) -> np.ndarray:
            radius = np.interp(d, [300.0, 610.0, 870.0, 1060.0], [44.0, 38.0, 30.0, 26.0])
            return ((x - ax) ** 2 + y**2 <= radius**2) & (d >= 300.0)

        def compartment(x: np.ndarray, y: np.ndarray, d: np.ndarray, side: str = side) -> np.ndarray:
            return canvas.choose(
                x,
                [
                    ((d < 610.0) & (y < 0.0), f"upper_arm_anterior_compartment_{side}", "muscle"),
                    (d < 610.0, f"upper_arm_posterior_compartment_{side}", "muscle"),
                ],
                (f"forearm_muscles_{side}", "muscle"),
            )

        canvas.paint((arm, (ax - 45.0, ax + 45.0, -45.0, 45.0, 300.0, 870.0)), compartment)
        # The hand: soft tissue without a site of its own around the carpal, metacarpal and finger bones.
        canvas.paint((arm, (ax - 45.0, ax + 45.0, -45.0, 45.0, 870.0, 1060.0)), BODY_FAT)
        canvas.paint(ellipsoid((ax, 0.0, 886.0), (17.0, 10.0, 14.0)), canvas.site(f"carpus_{side}", "bone"))
        canvas.paint(ellipsoid((ax, 0.0, 932.0), (16.0, 7.0, 30.0)), canvas.site(f"metacarpus_{side}", "bone"))
        canvas.paint(ellipsoid((ax, 0.0, 1005.0), (14.0, 6.0, 40.0)), canvas.site(f"fingers_{side}", "bone"))
        canvas.paint(ellipsoid((ax, 0.0, 318.0), (48.0, 48.0, 40.0)), canvas.site(f"shoulder_muscles_{side}", "muscle"))
        canvas.paint(ellipsoid((ax - sign * 6.0, 0.0, 318.0), (24.0, 24.0, 24.0)), canvas.site(f"humerus_proximal_{side}", "marrow"))
        canvas.paint(cylinder(ax, 0.0, 11.0, 11.0, 340.0, 380.0), canvas.site(f"humerus_proximal_{side}", "bone"))
        canvas.paint(cylinder(ax, 0.0, 11.0, 11.0, 380.0, 545.0), canvas.site(f"humerus_shaft_{side}", "bone"))
        canvas.paint(ellipsoid((ax, 0.0, 585.0), (24.0, 13.0, 38.0)), canvas.site(f"humerus_distal_{side}", "bone"))
        canvas.paint(cylinder(ax + sign * 10.0, -6.0, 7.0, 7.0, 625.0, 700.0), canvas.site(f"radius_proximal_{side}", "bone"))
        canvas.paint(cylinder(ax - sign * 8.0, 10.0, 9.0, 9.0, 620.0, 700.0), canvas.site(f"ulna_proximal_{side}", "bone"))
        canvas.paint(cylinder(ax + sign * 10.0, -6.0, 10.0, 9.0, 800.0, 868.0), canvas.site(f"radius_distal_{side}", "bone"))
        canvas.paint(cylinder(ax - sign * 10.0, 8.0, 6.0, 6.0, 800.0, 868.0), canvas.site(f"ulna_distal_{side}", "bone"))
        canvas.paint(capsule((sign * 22.0, -62.0, 288.0), (sign * 165.0, -12.0, 292.0), 8.0), canvas.site(f"clavicle_{side}", "bone"))
        canvas.paint(ellipsoid((sign * 105.0, 92.0, 380.0), (45.0, 6.0, 65.0)), canvas.site(f"scapula_body_{side}", "bone"))


def paint_lower_limbs(canvas: Canvas) -> None:
    """Hips, gluteal muscles, femora and thigh compartments down to mid-thigh."""
    for side, sign in SIDES.items():
        cx = sign * 88.0

        def thigh(x: np.ndarray, y: np.ndarray, d: np.ndarray, cx: float = cx, side: str = side) -> np.ndarray:
            medial = np.abs(x) < np.abs(cx) - 28.0
            return canvas.choose(
                x,
                [
                    (medial, f"thigh_medial_compartment_{side}", "muscle"),
                    (y < 10.0, f"thigh_anterior_compartment_{side}", "muscle"),
                ],
                (f"thigh_posterior_compartment_{side}", "muscle"),
            )

        canvas.paint(cylinder(cx, 5.0, 70.0, 75.0, 925.0, 1080.0), thigh)
        canvas.paint(ellipsoid((sign * 80.0, 75.0, 855.0), (60.0, 26.0, 55.0)), canvas.site(f"gluteus_maximus_{side}", "muscle"))
        canvas.paint(ellipsoid((sign * 138.0, 30.0, 790.0), (18.0, 40.0, 45.0)), canvas.site(f"gluteus_medius_{side}", "muscle"))
        head = (sign * 92.0, 0.0, 872.0)
        canvas.paint(ellipsoid(head, (23.0, 23.0, 23.0)), canvas.site(f"femoral_head_{side}", "marrow"))
        canvas.paint(capsule((sign * 105.0, 2.0, 880.0), (sign * 122.0, 5.0, 895.0), 14.0), canvas.site(f"femoral_neck_{side}", "marrow"))
        canvas.paint(ellipsoid((sign * 132.0, 8.0, 910.0), (22.0, 22.0, 24.0)), canvas.site(f"trochanteric_region_{side}", "marrow"))
        canvas.paint(capsule((sign * 125.0, 8.0, 935.0), (sign * 105.0, 5.0, 1080.0), 14.0), canvas.site(f"femur_shaft_{side}", "bone"))


# ----------------------------------------------------------------------------- skeleton
def paint_spine(canvas: Canvas) -> None:
    """Vertebrae C1 to L5 with posterior arches, the spinal canal and the sacrum."""
    levels = [("c", i, 22.0, 10.0) for i in range(1, 8)] + [("t", i, 50.0 + 0.5 * i, 15.0 + 0.5 * i) for i in range(1, 13)]
    levels += [("l", i, 45.0, 21.0) for i in range(1, 6)]
    for prefix, level, body_y, radius in levels:
        d0, d1 = vertebra_range(prefix, level)
        label = canvas.site(f"vertebra_{prefix}{level}", "marrow")
        canvas.paint(cylinder(0.0, body_y, radius, radius * 0.85, d0, d1), label)
        canal_y = body_y + radius * 0.85 + 8.0
        canvas.paint(cylinder(0.0, canal_y, 14.0, 14.0, d0, d1), label)
        canvas.paint(box(-4.0, 4.0, canal_y, canal_y + 28.0, d0, d1), label)
        cord = {"c": "spinal_cord_cervical", "t": "spinal_cord_thoracic", "l": "spinal_canal_lumbar"}[prefix]
        canvas.paint(cylinder(0.0, canal_y, 7.0, 7.0, d0, d1), canvas.site(cord, "cord"))

    def sacrum_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return canvas.choose(x, [(x > 18.0, "sacral_ala_left", "marrow"), (x < -18.0, "sacral_ala_right", "marrow")], ("sacral_body", "marrow"))

    canvas.paint(ellipsoid((0.0, 80.0, 780.0), (48.0, 20.0, 80.0)), sacrum_label)
    canvas.paint(ellipsoid((0.0, 95.0, 872.0), (8.0, 8.0, 12.0)), canvas.site("coccyx", "bone"))


def paint_ribs_and_sternum(canvas: Canvas) -> None:
    """Twelve rib pairs around the chest wall, sloping down anteriorly, and the sternum."""
    pitch, drop = THORACIC_STEP, 55.0
    reach = np.array([-80.0, -80.0, -80.0, -80.0, -80.0, -80.0, -75.0, -60.0, -50.0, -40.0, 5.0, 30.0])
    left, right = [], []
    for rib in range(1, 13):
        left.append(canvas.site(f"rib_{rib}_left", "bone"))
        right.append(canvas.site(f"rib_{rib}_right", "bone"))
    left_labels, right_labels = np.array(left, dtype=np.uint16), np.array(right, dtype=np.uint16)

    def rib_geometry(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ax, ay = trunk_axes(d)
        theta = np.degrees(np.arctan2(y, np.abs(x)))
        rho = np.sqrt((x / (ax - 14.0)) ** 2 + (y / (ay - 12.0)) ** 2)
        attach = THORACIC_TOP + pitch * 0.5 + drop * (1.0 - np.sin(np.radians(theta))) / 2.0
        position = (d - attach) / pitch
        index = np.rint(position).astype(int)
        near_level = np.abs(position - index) * pitch <= 5.0
        ring = np.abs(rho - 1.0) * (ax + ay) / 2.0 <= 5.0
        valid = (index >= 0) & (index <= 11) & (np.abs(x) > 28.0)
        reach_ok = theta >= reach[np.clip(index, 0, 11)]
        return valid & near_level & ring & reach_ok, np.clip(index, 0, 11)

    def mask(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return rib_geometry(x, y, d)[0]

    def label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        index = rib_geometry(x, y, d)[1]
        return np.where(x >= 0, left_labels[index], right_labels[index])

    canvas.paint((mask, (-170.0, 170.0, -115.0, 115.0, 270.0, 620.0)), label)

    for site, d0, d1 in (("manubrium", 292.0, 340.0), ("sternal_body", 340.0, 450.0), ("xiphoid_process", 450.0, 475.0)):
        width = 24.0 if site == "manubrium" else 15.0

        def sternum(x: np.ndarray, y: np.ndarray, d: np.ndarray, width: float = width, d0: float = d0, d1: float = d1) -> np.ndarray:
            front = -trunk_axes(d)[1]
            return (np.abs(x) <= width) & (y >= front + 10.0) & (y <= front + 24.0) & (d >= d0) & (d <= d1)

        canvas.paint((sternum, (-width, width, -115.0, -70.0, d0, d1)), canvas.site(site, "bone"))


def paint_pelvic_bones(canvas: Canvas) -> None:
    """Ilium, ischium, pubic bone and acetabulum of each hip bone."""
    for side, sign in SIDES.items():
        canvas.paint(ellipsoid((sign * 100.0, 45.0, 790.0), (42.0, 16.0, 52.0)), canvas.site(f"ilium_{side}", "marrow"))
        canvas.paint(ellipsoid((sign * 74.0, 45.0, 905.0), (16.0, 24.0, 28.0)), canvas.site(f"ischium_{side}", "marrow"))
        canvas.paint(ellipsoid((sign * 38.0, -62.0, 882.0), (34.0, 11.0, 14.0)), canvas.site(f"pubic_bone_{side}", "marrow"))
        head = (sign * 92.0, 0.0, 872.0)

        def acetabulum(x: np.ndarray, y: np.ndarray, d: np.ndarray, head: tuple = head, sign: float = sign) -> np.ndarray:
            r2 = (x - head[0]) ** 2 + (y - head[1]) ** 2 + (d - head[2]) ** 2
            return (r2 <= 32.0**2) & (r2 > 24.0**2) & (sign * (x - head[0]) < 8.0)

        canvas.paint((acetabulum, (head[0] - 32.0, head[0] + 32.0, -32.0, 32.0, head[2] - 32.0, head[2] + 32.0)), canvas.site(f"acetabulum_{side}", "marrow"))


# ----------------------------------------------------------------------------- subcutaneous fat
SUBCUTANEOUS_MM = 12.0  # thickness of the fat layer under the skin that is labelled by region


def _is_body_fat(target: np.ndarray) -> np.ndarray:
    return target == BODY_FAT


def paint_subcutaneous_tissue(canvas: Canvas) -> None:
    """Label the outer fat layer of neck, trunk, arms and thighs by region and side.

    Only voxels still labelled ``BODY_FAT`` change, so organs, muscles and bones that reach
    the surface keep their labels.
    """
    def neck(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        radius = np.sqrt(x**2 + (y - 12.0) ** 2)
        return (radius > 58.0 - SUBCUTANEOUS_MM) & (radius <= 58.0) & (d >= 180.0) & (d < 280.0)

    canvas.paint((neck, (-58.0, 58.0, -46.0, 70.0, 180.0, 280.0)), sided_label(canvas, "neck_subcutaneous_tissue", "fat"), _is_body_fat)

    def trunk_shell(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        ax, ay = trunk_axes(d)
        outer = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
        inner = (x / (ax - SUBCUTANEOUS_MM)) ** 2 + (y / (ay - SUBCUTANEOUS_MM)) ** 2 <= 1.0
        return outer & ~inner & (d >= 280.0) & (d <= 910.0)

    def trunk_label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        right = x < 0
        chest = d < 540.0
        abdomen = (d >= 540.0) & (d < 740.0)
        return canvas.choose(
            x,
            [
                (chest & (y > 45.0), "upper_back_subcutaneous_tissue", "fat"),
                (chest & right, "chest_subcutaneous_tissue_right", "fat"),
                (chest, "chest_subcutaneous_tissue_left", "fat"),
                (abdomen & (y > 45.0), "lower_back_subcutaneous_tissue", "fat"),
                (abdomen & right, "abdominal_subcutaneous_tissue_right", "fat"),
                (abdomen, "abdominal_subcutaneous_tissue_left", "fat"),
                (right, "pelvic_subcutaneous_tissue_right", "fat"),
            ],
            ("pelvic_subcutaneous_tissue_left", "fat"),
        )

    canvas.paint((trunk_shell, (-170.0, 170.0, -115.0, 115.0, 280.0, 910.0)), trunk_label, _is_body_fat)

    for side, sign in SIDES.items():
        ax = sign * ARM_X

        def arm_shell(x: np.ndarray, y: np.ndarray, d: np.ndarray, ax: float = ax) -> np.ndarray:
            radius = np.interp(d, [300.0, 610.0, 870.0, 1060.0], [44.0, 38.0, 30.0, 26.0])
            distance = np.sqrt((x - ax) ** 2 + y**2)
            return (distance <= radius) & (distance > radius - 6.0) & (d >= 300.0)

        canvas.paint((arm_shell, (ax - 45.0, ax + 45.0, -45.0, 45.0, 300.0, 1060.0)), canvas.site(f"upper_limb_subcutaneous_tissue_{side}", "fat"), _is_body_fat)

        def thigh_shell(x: np.ndarray, y: np.ndarray, d: np.ndarray, cx: float = sign * 88.0) -> np.ndarray:
            outer = ((x - cx) / 88.0) ** 2 + (y / 92.0) ** 2 <= 1.0
            inner = ((x - cx) / (88.0 - SUBCUTANEOUS_MM)) ** 2 + (y / (92.0 - SUBCUTANEOUS_MM)) ** 2 <= 1.0
            return outer & ~inner & (d > 910.0)

        canvas.paint(
            (thigh_shell, (sign * 88.0 - 88.0, sign * 88.0 + 88.0, -92.0, 92.0, 910.0, 1080.0)),
            canvas.site(f"lower_limb_subcutaneous_tissue_{side}", "fat"),
            _is_body_fat,
        )
