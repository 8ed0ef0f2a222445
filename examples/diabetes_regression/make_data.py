"""Write diabetes.csv from the copy of the diabetes data that ships inside scikit-learn.

442 rows: 10 float features (age, sex, bmi, bp, s1..s6, already centred and scaled by scikit-learn) and the
float target ``progression`` (disease progression one year later, 25..346). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.datasets import load_diabetes


def main(folder: Path) -> Path:
    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    path = folder / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=Path("."), help="where to write diabetes.csv (default: here)"
    )
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    print(main(folder))
