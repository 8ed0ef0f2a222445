"""Write digits.csv from the copy of the 8x8 handwritten digits that ships inside scikit-learn.

1,797 rows: 64 pixel columns ``pixel_0`` .. ``pixel_63`` (row by row, 0..16) and the class ``label`` (0..9).
dataset.yaml reads the 64 columns as one ``[1, 8, 8]`` image tensor. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.datasets import load_digits


def main(folder: Path) -> Path:
    digits = load_digits(as_frame=True)
    frame = digits.data.astype("int64")
    frame.columns = [f"pixel_{i}" for i in range(frame.shape[1])]
    frame["label"] = digits.target
    path = folder / "digits.csv"
    frame.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=Path("."), help="where to write digits.csv (default: here)"
    )
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    print(main(folder))
