"""MFG-Net (Xu et al., Array 14, 100152, 2022): Tables 3 and 4 (Sec. 4.3), VeRi-776, and its own
row of the main comparison Tables 5 (VeRi-776), 6 (VehicleID Test800/1600/2400) and 7 (VRIC)."""

from dataclasses import replace

from . import Delta, Row, Table, with_text

_M = "MODEL.MFGNET."
_PAPER = "mfgnet-array-2022.md"
_CFG = ("VeRi",)
_COST = ("not stated (Sec. 4.1: \"a workstation equipped with AMD Ryzen 5 3600X CPU 32G, NVIDIA "
         "GeForce RTX 3080\"; Sec. 4.4: 30 epochs on VeRi-776, batch 48; no time is given)")
_COLS = (("VeRi", "mAP"), ("VeRi", "mINP"), ("VeRi", "Rank-1"))


def _veri(mAP, mINP, r1):
    return {"VeRi": {"mAP": mAP, "mINP": mINP, "Rank-1": r1}}


# Table 3: "Horizontal division times" k gives k + 1 stripes (Sec. 4.3: "quartered (the number of
# horizontal divisions is equal to 3)")
_T3 = ((1, "1", (71.11, 25.58, 93.68), "1\t71.11\t25.58\t93.68"),
       (2, "2", (72.05, 28.45, 92.60), "2\t72.05\t28.45\t92.60"),
       (3, "3 (Ours)", (77.15, 36.82, 96.72),
        "<b>3 (Ours)</b>\t<b>77.15</b>\t<b>36.82</b>\t<b>96.72</b>"),
       (4, "4", (73.10, 30.01, 94.82), "4\t73.10\t30.01\t94.82"),
       (5, "5", (70.88, 25.32, 90.98), "5\t70.88\t25.32\t90.98"))

TABLE3 = Table(
    "mfgnet", "table3",
    "Table 3: \"The result of the horizontal division times of feature map on VeRi-776 dataset.\"",
    _CFG, "Table 3, Sec. 4.3", _COST,
    tuple(Row("mfgnet", "table3", f"{k}_divisions", label, (_M + "NUM_STRIPES", str(k + 1)),
              _veri(*nums), evidence=(line,), source="Table 3",
              note=f"{k} horizontal divisions = {k + 1} stripes" + (" (the paper config)"
                                                                    if k == 3 else ""))
          for k, label, nums, line in _T3),
    _PAPER, anchor="**Table 3**", columns=_COLS)

_T4 = (
    ("baseline", "Baseline",
     (_M + "GLOBAL.USE_CONV", "False", _M + "LOSS.USE_TRIPLET", "False", _M + "USE_LOCAL", "False",
      _M + "USE_CAM", "False"), (62.43, 22.71, 89.70), "Baseline\t62.43\t22.71\t89.70",
     "\"ResNet50 with softmax cross-entropy loss\" (Sec. 4.3): no global convs, no triplet, no "
     "local branch, no CAM"),
    ("global_no_triplet", "+ global branch (w/o $L_{hard}$ mining triplet)",
     (_M + "LOSS.USE_TRIPLET", "False", _M + "USE_LOCAL", "False", _M + "USE_CAM", "False"),
     (68.55, 27.62, 91.17), "+ global branch (w/o $L_{hard}$ mining triplet)\t68.55\t27.62\t91.17",
     ""),
    ("global_triplet", "+ global branch (w/ $L_{hard}$ mining triplet)",
     (_M + "USE_LOCAL", "False", _M + "USE_CAM", "False"),
     (70.68, 33.00, 93.78), "+ global branch (w/ $L_{hard}$ mining triplet)\t70.68\t33.00\t93.78",
     ""),
    ("local", "+ local branch", (_M + "USE_CAM", "False"),
     (75.10, 35.54, 94.88), "+ local branch\t75.10\t35.54\t94.88", ""),
    ("cam", "+CAM", (), (77.15, 36.82, 96.72),
     "+CAM\t<b>77.15</b>\t<b>36.82</b>\t<b>96.72</b>", "the paper config"),
)

TABLE4 = Table(
    "mfgnet", "table4",
    "Table 4: \"The ablation studies result of the MFG-Net on VeRi-776 dataset.\"",
    _CFG, "Table 4, Sec. 4.3", _COST,
    tuple(Row("mfgnet", "table4", rid, label, ov, _veri(*nums), evidence=(line,),
              source="Table 4", note=note)
          for rid, label, ov, nums, line, note in _T4),
    _PAPER, anchor="**Table 4**", columns=_COLS)

# Sec. 4.3 prints the differences between consecutive rows of Table 4
for _rid, _other, _sentence, _d in (
        ("global_no_triplet", "baseline",
         "compared with “baseline”, “baseline + global branch (w/o  $L_{hard}$  mining triplet)” "
         "improves the 6.12% mAP, 4.91% mINP, and 1.47% Rank1", (6.12, 4.91, 1.47)),
        ("global_triplet", "global_no_triplet",
         "by a large margin (2.13% mAP, 5.38% mINP, and 2.61% Rank1)", (2.13, 5.38, 2.61)),
        ("local", "global_triplet",
         "After adding local branch, the network improves the 4.42% mAP, 2.54% mINP, and 1.10% "
         "Rank1", (4.42, 2.54, 1.10)),
        ("cam", "local", "By adding CAM, the network achieves 2.05%, 1.28% and 1.84% improvement "
         "in mAP, mINP and Rank1", (2.05, 1.28, 1.84))):
    TABLE4 = with_text(TABLE4, _rid, _sentence, *(Delta(_other, "VeRi", m, v)
                                                   for m, v in zip(("mAP", "mINP", "Rank-1"), _d)))

_MAIN_DATASETS = ("VeRi", "SmallVehicleID", "MediumVehicleID", "LargeVehicleID", "VRIC")
MAIN = Table(
    "mfgnet", "main", "Tables 5, 6, 7: \"Comparison with state-of-the-art methods on VeRi-776\" / "
    "\"on VehicleID\" (Test800 / 1600 / 2400) / \"on VRIC\" (MFG-Net's own row)",
    _MAIN_DATASETS, "Tables 5-7, Secs. 4.4-4.6",
    "not stated (Sec. 4.1: \"NVIDIA GeForce RTX 3080\"; 30 epochs on VeRi-776 (Sec. 4.4), 40 on "
    "VehicleID (Sec. 4.5) and VRIC (Sec. 4.6); no time is given)", (
        Row("mfgnet", "main", "mfgnet", "MFG-Net", (), {
            "VeRi": {"mAP": 77.15, "mINP": 36.82, "Rank-1": 96.72},
            "SmallVehicleID": {"mAP": 88.37, "mINP": 68.32, "Rank-1": 82.02},
            "MediumVehicleID": {"mAP": 84.70, "mINP": 64.38, "Rank-1": 78.69},
            "LargeVehicleID": {"mAP": 81.01, "mINP": 60.03, "Rank-1": 75.16},
            "VRIC": {"mAP": 84.86, "mINP": 55.81, "Rank-1": 79.56}},
            evidence=("<b>MFG-Net</b>\t<b>77.15</b>\t<b>36.82</b>\t<b>96.72</b>",
                      "MFG-Net\t<b>88.37</b>\t<b>68.32</b>\t<b>82.02</b>\t<b>84.70</b>\t"
                      "<b>64.38</b>\t<b>78.69</b>\t<b>81.01</b>\t<b>60.03</b>\t<b>75.16</b>",
                      "<b>MFG-Net</b>\t<b>84.86</b>\t<b>55.81</b>\t<b>79.56</b>"),
            source="Tables 5, 6, 7",
            note="the paper config of each dataset; VehicleID Test800 / 1600 / 2400 = Small / "
                 "Medium / LargeVehicleID"),
    ), _PAPER, anchor="Comparison with state-of-the-art methods on VeRi-776.", decimals=2,
    per_dataset=True)

TABLE3 = replace(TABLE3, decimals=2)
TABLE4 = replace(TABLE4, decimals=2)
TABLES = (MAIN, TABLE3, TABLE4)
