"""Write breast_cancer.csv from the copy of the Wisconsin breast-cancer data that ships inside scikit-learn.

569 rows, 30 float features (spaces in their names replaced by '_') and the target 'diagnosis' as the strings
malignant / benign: the kind of file a team brings. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer


def main(folder: Path) -> Path:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["diagnosis"] = np.where(data.target == 0, "malignant", "benign")
    path = folder / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=Path("."), help="where to write breast_cancer.csv (default: here)"
    )
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    print(main(folder))
